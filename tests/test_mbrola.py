"""MBROLA voices and the Debian non-free packages they come from (fetched with a private apt configuration).

Nothing here reaches the network: a fake ``apt-get`` builds the .debs it is asked for with ``dpkg-deb``, and a
fake ``espeak-ng`` stands in for the front end that runs ``mbrola``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from zoo.datamodules import debian_archive, mbrola
from zoo.datamodules.debian_archive import DebianArchiveError, unpacked_packages
from zoo.datamodules.espeak import Voicing
from zoo.datamodules.mbrola import MBROLA_VOICES, PACKAGES, Mbrola, MbrolaError, mbrola_installation
from zoo.datamodules.synthetic_speech import (
    SyntheticCorpusConfig,
    build_corpus,
    corpus_info,
    read_manifest,
    voice_missing,
)

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (a Debian system)")

FAKE_APT_GET = """#!/bin/bash
# Stands in for apt-get: logs its arguments (and the private sources list) and, for `download`, builds each
# package's .deb in the current folder with dpkg-deb; a package named missing-* is "unable to locate".
echo "$*" >> {log}
for arg in "$@"; do case "$arg" in -oDir::Etc::sourcelist=*) cp "${{arg#*=}}" {log}.sources;; esac; done
downloading=0
for arg in "$@"; do
  if [ "$downloading" = 1 ]; then
    case "$arg" in missing-*) echo "E: Unable to locate package $arg" >&2; exit 100;; esac
    tree=$(mktemp -d); mkdir -p "$tree/DEBIAN" "$tree/usr/bin"
    printf 'Package: %s\\nVersion: 1.%s-fake\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: fake\\n' \\
      "$arg" "${{#arg}}" > "$tree/DEBIAN/control"
    case "$arg" in
      mbrola) printf '#!/bin/sh\\nexit 0\\n' > "$tree/usr/bin/mbrola"; chmod 755 "$tree/usr/bin/mbrola";;
      mbrola-*) voice=${{arg#mbrola-}}; mkdir -p "$tree/usr/share/mbrola/$voice"
                echo "$voice" > "$tree/usr/share/mbrola/$voice/$voice";;
      *) mkdir -p "$tree/usr/share/$arg"; echo "$arg" > "$tree/usr/share/$arg/file.txt";;
    esac
    dpkg-deb --build --root-owner-group "$tree" "${{arg}}_1.0_all.deb" > /dev/null || exit 1
    rm -rf "$tree"
  fi
  [ "$arg" = download ] && downloading=1
done
exit 0
"""

FAKE_ESPEAK = """#!{python}
# Stands in for espeak-ng: --version names a data folder; otherwise checks that the MBROLA voice and program are
# where espeak-ng looks for them, logs its arguments and writes 0.2 s of tone per word (pitch -> frequency).
import json, os, shutil, sys
import numpy as np, soundfile
args = sys.argv[1:]
if args == ["--version"]:
    print("eSpeak NG text-to-speech: 9.9-fake  Data at: {data}"); sys.exit(0)
value = lambda flag: args[args.index(flag) + 1]
voice = value("-v").removeprefix("mb-")
data = os.path.join(os.environ.get("ESPEAK_DATA_PATH", "/nowhere"), "espeak-ng-data")
if not os.path.isfile(os.path.join(data, "mbrola", voice)) or shutil.which("mbrola") is None:
    print("Cannot find MBROLA voice file", voice, file=sys.stderr); sys.exit(1)
with open({log!r}, "a") as log:
    log.write(json.dumps(dict(args=args, phontab=os.path.exists(os.path.join(data, "phontab")))) + "\\n")
words = args[args.index("--") + 1].split()
t = np.arange(int(16000 * 0.2 * len(words))) / 16000
soundfile.write(value("-w"), 0.3 * np.sin(2 * np.pi * 4 * int(value("-p")) * t), 16000, subtype="PCM_16")
"""


@pytest.fixture
def fake_debian(tmp_path, monkeypatch) -> Path:
    """A fake apt-get and espeak-ng on PATH, an empty zoo cache, no system MBROLA; -> the apt-get log."""
    bin_dir, log, data = tmp_path / "bin", tmp_path / "apt.log", tmp_path / "espeak-ng-data"
    bin_dir.mkdir()
    data.mkdir()
    (data / "phontab").write_text("fake")
    for name, text in (
        ("apt-get", FAKE_APT_GET.format(log=log)),
        ("espeak-ng", FAKE_ESPEAK.format(python=sys.executable, data=data, log=str(tmp_path / "espeak.log"))),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mbrola, "SYSTEM_VOICES", tmp_path / "no-system-mbrola")
    return log


def test_packages_are_fetched_with_a_private_apt_configuration_once(fake_debian, tmp_path):
    root = unpacked_packages("demo", ["zoo-fake-a", "zoo-fake-bb"])
    assert root == tmp_path / "cache" / "debian" / "demo"
    assert (root / "usr/share/zoo-fake-a/file.txt").read_text() == "zoo-fake-a\n"
    assert json.loads((root / "packages.json").read_text()) == {"zoo-fake-a": "1.10-fake", "zoo-fake-bb": "1.11-fake"}
    calls = fake_debian.read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["update", "zoo-fake-bb"] and "download zoo-fake-a zoo-fake-bb" in calls[1]
    for call in calls:  # every apt path points into the zoo cache: the system's sources and lists are untouched
        options = dict(a.removeprefix("-o").split("=", 1) for a in call.split() if a.startswith("-oDir"))
        assert options["Dir::Etc::sourceparts"] == "-"
        for key in ("Dir::Etc::sourcelist", "Dir::State::Lists", "Dir::Cache"):
            assert options[key].startswith(str(tmp_path / "cache" / "debian"))
    sources = Path(f"{fake_debian}.sources").read_text().split()
    assert sources[0] == "deb" and sources[2] == debian_archive.suite()
    assert sources[3:] == ["main", "contrib", "non-free"]
    assert [p.name for p in root.parent.iterdir()] == ["demo"]  # the work folder is gone
    fake_debian.write_text("")
    assert unpacked_packages("demo", ["zoo-fake-bb", "zoo-fake-a"]) == root and fake_debian.read_text() == ""


def test_a_package_apt_cannot_find_is_one_line_and_leaves_nothing(fake_debian, tmp_path, monkeypatch):
    with pytest.raises(DebianArchiveError) as error:
        unpacked_packages("demo", ["zoo-fake-a", "missing-voice"])
    message = str(error.value)
    assert "\n" not in message and "missing-voice" in message and "Unable to locate package" in message
    assert "apt-get install zoo-fake-a missing-voice" in message
    assert list((tmp_path / "cache" / "debian").iterdir()) == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(DebianArchiveError, match="needs apt-get"):
        unpacked_packages("demo", ["zoo-fake-a"])


def test_mbrola_voices_render_through_espeak_ng_with_the_fetched_voices(fake_debian, tmp_path):
    installation = mbrola_installation()
    root = tmp_path / "cache" / "debian" / "mbrola"
    assert installation.version == "1.6-fake" and installation.program_dir == str(root / "usr/bin")
    overlay = Path(installation.espeak_data_path) / "espeak-ng-data"
    assert (overlay / "phontab").resolve() == tmp_path / "espeak-ng-data" / "phontab"  # espeak-ng's own data ...
    for voice in MBROLA_VOICES:  # ... plus the voices where espeak-ng looks for them
        assert (overlay / "mbrola" / voice).read_text() == f"{voice}\n"
    synthesizer = Mbrola()
    samples = synthesizer.render("three short words", Voicing("mbrola:en1", rate=150, pitch=40, word_gap=1))
    assert synthesizer.sample_rate == 16000 and samples.shape == (int(16000 * 0.6),)
    call = json.loads((tmp_path / "espeak.log").read_text())
    assert call["phontab"] and call["args"][:8] == ["-v", "mb-en1", "-s", "150", "-p", "40", "-g", "1"]
    with pytest.raises(MbrolaError, match="unknown MBROLA voice 'mbrola:xx9'"):
        synthesizer.render("hello", Voicing("mbrola:xx9"))


def test_a_corpus_with_mbrola_voices_records_the_family_and_its_version(fake_debian, tmp_path):
    config = SyntheticCorpusConfig(
        train_utterances=4, val_utterances=2, test_utterances=2, train_variants=["mbrola:*"], cache_dir=str(tmp_path)
    )
    manifests = build_corpus(config, num_workers=1)
    train = read_manifest(manifests.train)
    assert sorted(r["voice"] for r in train) == sorted(f"mbrola:{v}" for v in MBROLA_VOICES)  # each in turn
    assert all(r["duration"] == pytest.approx(0.2 * len(r["text"].split()), abs=1e-3) for r in train)
    assert "mbrola 1.6-fake" in corpus_info(manifests)["synthesizers"]
    assert config.engine_versions() == {"mbrola": "1.6-fake"}


def test_without_apt_the_mbrola_voices_are_left_out_with_one_line(fake_debian, tmp_path, monkeypatch):
    (tmp_path / "bin" / "apt-get").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no apt-get at all, not even the system's

    reason = voice_missing("mbrola:us2")
    assert reason.startswith("mbrola:us2: the voices 'mbrola:...' need MBROLA") and "\n" not in reason
    assert "apt-get install " + " ".join(PACKAGES) in reason
