"""RHVoice through its C API: a fake libRHVoice.so.5, compiled here, stands in for the Debian non-free library.

The fake reads the structs the binding passes (data path, voice profile, relative rate and pitch) and answers
through the callbacks, so a wrong struct layout or a lost callback fails these tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from zoo.datamodules import rhvoice
from zoo.datamodules.espeak import Voicing
from zoo.datamodules.rhvoice import PACKAGES, RHVoice, RHVoiceError
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, build_corpus, corpus_info, read_manifest

COMPILER = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="needs a C compiler")

FAKE_LIBRARY = r"""
#include <stdlib.h>
#include <string.h>
typedef struct { int (*set_sample_rate)(int, void*); int (*play_speech)(const short*, unsigned int, void*);
                 void* optional[7]; } callbacks;
typedef struct { const char *data_path, *config_path; const char** resource_paths; callbacks cb;
                 unsigned int options; } init_params;
typedef struct { const char* voice_profile; double absolute_rate, absolute_pitch, absolute_volume;
                 double relative_rate, relative_pitch, relative_volume; int punctuation_mode;
                 const char* punctuation_list; int capitals_mode; int flags; } synth_params;
typedef struct { int words; double rate, pitch; char voice[64]; } message;
static callbacks cb;
static int engine;
const char* RHVoice_get_version(void) { return "9.9-fake"; }
void* RHVoice_new_tts_engine(const init_params* p) {
  for (int i = 0; i < 7; i++) if (p->cb.optional[i]) return NULL;   /* optional callbacks must be NULL */
  cb = p->cb;
  return strstr(p->data_path, "/debian/rhvoice/usr/share/RHVoice") ? &engine : NULL;
}
void* RHVoice_new_message(void* e, const char* text, unsigned int n, int type, const synth_params* s, void* u) {
  if (e != &engine || type != 0 || s->absolute_rate != 0 || s->relative_volume != 1) return NULL;
  message* m = calloc(1, sizeof *m);
  m->words = 1;
  for (unsigned int i = 0; i < n; i++) m->words += text[i] == ' ';
  m->rate = s->relative_rate; m->pitch = s->relative_pitch; strncpy(m->voice, s->voice_profile, 63);
  return m;
}
/* 0.1 s per word at 24 kHz divided by the rate, in two chunks; amplitude 1000 * pitch, +1 for the voice Clb */
int RHVoice_speak(void* p) {
  message* m = p;
  unsigned int count = (unsigned int)(2400 * m->words / m->rate);
  short* samples = malloc(count * sizeof *samples);
  short value = (short)(1000 * m->pitch + 0.5) + (strcmp(m->voice, "Clb") == 0);
  for (unsigned int i = 0; i < count; i++) samples[i] = i % 2 ? value : -value;
  cb.set_sample_rate(24000, NULL);
  int ok = cb.play_speech(samples, count / 2, NULL) && cb.play_speech(samples + count / 2, count - count / 2, NULL);
  free(samples);
  return ok;
}
void RHVoice_delete_message(void* m) { free(m); }
"""


@pytest.fixture
def fake_rhvoice(tmp_path, monkeypatch):
    """The unpacked packages in an empty zoo cache, with the fake library (nothing is fetched)."""
    root = tmp_path / "cache" / "debian" / "rhvoice"
    libraries = root / "usr/lib/x86_64-linux-gnu"
    libraries.mkdir(parents=True)
    (root / "usr/share/RHVoice").mkdir(parents=True)
    (tmp_path / "fake.c").write_text(FAKE_LIBRARY)
    (tmp_path / "core.c").write_text("int rhvoice_core_fake;\n")
    for source, name in (("core.c", "libRHVoice_core.so.7"), ("fake.c", "libRHVoice.so.5")):
        subprocess.run([COMPILER, "-shared", "-fPIC", "-o", libraries / name, tmp_path / source], check=True)
    versions = {package: "1.8.0-fake" for package in PACKAGES}
    (root / "packages.json").write_text(json.dumps(versions))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rhvoice, "SYSTEM_ROOT", tmp_path / "no-system-rhvoice")
    return root


def test_rhvoice_renders_through_its_c_api(fake_rhvoice):
    synthesizer = RHVoice()
    assert synthesizer.version == "1.8.0-fake"
    slow = synthesizer.render("three short words", Voicing("rhvoice:clb", rate=140, pitch=60))
    assert synthesizer.sample_rate == 24000 and slow.dtype == np.int16
    assert slow.shape == (int(2400 * 3 / (140 / 175)),) and set(np.abs(slow)) == {1100 + 1}
    fast = synthesizer.render("two words", Voicing("rhvoice:bdl", rate=210, pitch=30))
    assert fast.shape == (int(2400 * 2 / (210 / 175)),) and set(np.abs(fast)) == {800}  # pitch 30 -> relative 0.8
    with pytest.raises(RHVoiceError, match="unknown RHVoice voice 'rhvoice:slt'"):
        synthesizer.render("hello", Voicing("rhvoice:slt"))  # Flite's slt speaker: not a corpus voice


def test_a_corpus_with_rhvoice_voices(fake_rhvoice, tmp_path):
    config = SyntheticCorpusConfig(
        train_utterances=4, val_utterances=2, test_utterances=2, train_variants=["rhvoice:*"], cache_dir=str(tmp_path)
    )
    manifests = build_corpus(config, num_workers=1)
    train = read_manifest(manifests.train)
    assert sorted(r["voice"] for r in train) == ["rhvoice:bdl", "rhvoice:bdl", "rhvoice:clb", "rhvoice:clb"]
    for row in train:  # written at 16 kHz from RHVoice's 24 kHz
        assert row["duration"] == pytest.approx(0.1 * len(row["text"].split()) * 175 / row["rate"], abs=1e-3)
    assert "rhvoice 1.8.0-fake" in corpus_info(manifests)["synthesizers"]


def test_missing_libraries_are_one_line(fake_rhvoice, monkeypatch):
    for library in (fake_rhvoice / "usr/lib/x86_64-linux-gnu").iterdir():
        library.unlink()
    with pytest.raises(RHVoiceError, match="could not load RHVoice's libraries from"):
        RHVoice()
    monkeypatch.setattr(rhvoice, "PACKAGES", ("librhvoice5",))  # another package set: a fetch, which fails
    monkeypatch.setenv("PATH", "/nowhere")
    with pytest.raises(RHVoiceError, match="need RHVoice: fetching the Debian packages librhvoice5 needs apt-get"):
        RHVoice()
