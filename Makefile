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

.PHONY: demo test install system-deps lock bench bench-compare bench-peers clean

demo: install
	$(VENV)/bin/zoo demo

# lint (ruff check + format check; the import-layer contracts run inside pytest), then the tests, offline
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

install: system-deps $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(LOCK) -e '.[test,plot,export,reference,voices]'
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
	/tmp/zoo-lock-venv/bin/pip install --quiet -c requirements/constraints.txt -e '.[test,plot,export,reference,voices]'
	/tmp/zoo-lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > $(LOCK)

# Quick benchmark set (a few minutes on 2 idle cores): each script writes bench/results/<name>.json,
# then bench/make_docs.py regenerates the tables of docs/benchmarks.md from those files.
# The long runs (bench/recsys_ml100k.py, bench/sortagrad.py, bench/lm_reproduce.py, full sizes) are
# run by hand with the command each table names; `make bench-compare` runs the peer comparisons.
BENCH_QUICK := "bench/jasper.py --skip-big --steps 3 --no-compile" \
	"bench/deepspeech2.py --steps 3 --skip-large" \
	"bench/lm.py --skip-paper --iters 3" \
	"bench/recsys.py --scale 0.02 --steps 5 --batch-sizes 128" \
	"bench/speech_pipeline.py" \
	"bench/synthetic_corpus.py --utterances 50"

bench: install
	@for b in $(BENCH_QUICK); do echo "== python $$b"; $(PY) $$b || exit 1; done
	$(PY) bench/make_docs.py

# Side by side with the peers' own code (NeMo from .venv-peers; DeepRecommender's checkout from
# ZOO_PEER_DEEPRECOMMENDER, skipped with a one-line note when unset).
bench-compare: install bench-peers
	$(PEERS_VENV)/bin/python bench/jasper_vs_nemo.py --models jasper-demo quartznet-small
	$(PEERS_VENV)/bin/python bench/jasper_vs_nemo.py --models quartznet-15x5 --modes fp32 bf16 --repeats 3 --name jasper_vs_nemo_15x5
	$(PY) bench/ds2_vs_deepspeech_pytorch.py
	$(PY) bench/ds2_recurrence.py
	$(PEERS_VENV)/bin/python bench/transcribe_vs_nemo.py --no-bf16
	$(PY) bench/recsys_vs_deeprecommender.py
	$(PY) bench/make_docs.py

# Peers' toolkits for side-by-side benchmarks and import fixtures (never a zoo dependency): NVIDIA NeMo
# in its own venv beside the locked torch/torchaudio, plus the zoo itself (editable; its other deps from the
# pyproject ranges: the full lock conflicts with NeMo, e.g. NeMo's lightning needs fsspec<2026).
# NeMo 2.4 (old-convention import fixtures; its transformers needs huggingface-hub<1, the zoo >=1, so no zoo;
# its numpy<2 needs a pyarrow built for numpy 1, which pyarrow does not declare):
#   make bench-peers PEERS_VENV=.venv-peers-nemo2.4 NEMO_VERSION=2.4.1 PEERS_ZOO=no PEERS_EXTRA='pyarrow<20'
PEERS_VENV ?= .venv-peers
NEMO_VERSION ?= 3.0.0
PEERS_ZOO ?= yes
PEERS_EXTRA ?=
bench-peers: system-deps $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	grep -E '^(torch|torchaudio)==' $(LOCK) > $(PEERS_VENV)/constraints.txt
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c $(PEERS_VENV)/constraints.txt \
	  'nemo_toolkit[asr]==$(NEMO_VERSION)' $(PEERS_EXTRA)
	$(if $(filter yes,$(PEERS_ZOO)),$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -c $(PEERS_VENV)/constraints.txt -e '.[test]',@echo "$(PEERS_VENV): NeMo only (PEERS_ZOO=$(PEERS_ZOO))")
	$(PEERS_VENV)/bin/python -c "import nemo, torch; print('nemo', nemo.__version__, 'torch', torch.__version__)"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
