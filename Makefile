# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv, install the pinned Python dependencies and the Debian packages the
# project needs (espeak-ng renders the embedded speech corpus, flite a second synthesizer for
# testing on unseen voices, fortunes ships the text corpus, g++ builds the BN-LSTM C++ recurrence,
# asterisk-core-sounds-en-wav and alsa-utils hold the real human speech the demos are tested on).

VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# Exact versions measured together (requirements/lock.txt pins every transitive package too).
LOCK      := requirements/lock.txt
DEB_PKGS  := espeak-ng fortunes flite g++ asterisk-core-sounds-en-wav alsa-utils
PYTEST_ARGS ?=

.PHONY: demo test install system-deps lock bench bench-peers clean

demo: install
	$(VENV)/bin/zoo demo

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

install: system-deps $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(LOCK) -e '.[test,plot,export,reference]'
	touch $(STAMP)

# Debian packages: installed when missing and running as root; otherwise say what to install.
system-deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "zoo needs the Debian packages:$$missing -- run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

# Re-measure the lock file from the compatible ranges in pyproject.toml + requirements/constraints.txt.
lock:
	rm -rf /tmp/zoo-lock-venv && $(PYTHON) -m venv /tmp/zoo-lock-venv
	/tmp/zoo-lock-venv/bin/pip install --quiet -c requirements/constraints.txt -e '.[test,plot,export,reference]'
	/tmp/zoo-lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > $(LOCK)

bench: install
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# Peers' toolkits for side-by-side benchmarks and import fixtures (never a zoo dependency): NVIDIA NeMo
# in its own venv beside the locked torch/torchaudio, plus the zoo itself (editable; its other deps from the
# pyproject ranges: the full lock conflicts with NeMo, e.g. NeMo's lightning needs fsspec<2026).
# Another NeMo release: make bench-peers PEERS_VENV=.venv-peers-nemo2.4 NEMO_VERSION=2.4.1
PEERS_VENV ?= .venv-peers
NEMO_VERSION ?= 3.0.0
bench-peers: system-deps $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	grep -E '^(torch|torchaudio)==' $(LOCK) > $(PEERS_VENV)/constraints.txt
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c $(PEERS_VENV)/constraints.txt \
	  'nemo_toolkit[asr]==$(NEMO_VERSION)'
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c $(PEERS_VENV)/constraints.txt -e '.[test]'
	$(PEERS_VENV)/bin/python -c "import nemo, zoo, torch; print('nemo', nemo.__version__, 'torch', torch.__version__)"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
