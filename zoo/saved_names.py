"""Stable names for the classes that saved files refer to, and the aliases of names written earlier.

An exported pipeline's ``config.json`` names its pipeline class (``"zoo_pipeline"``) and its network
(``"model_type"``), and a ``zoo fit`` checkpoint names its LightningModule (``"zoo_module"``). They record
the names of :data:`SAVED_NAMES` (``"speech-recognizer"``, ``"jasper"``), not Python class paths, so
moving or renaming a file breaks no published model: only the table below changes.

Files written before the names existed (zoo up to commit 705a245, 2026-12-06) record class paths;
:data:`LEGACY_CLASS_PATHS` maps each of them to its name. When a class moves, change its entry in
:data:`SAVED_NAMES` and add the old path to :data:`LEGACY_CLASS_PATHS` if files were ever written with it.
A class outside the table (a user's own pipeline or module) is recorded and found by its class path.
"""

from __future__ import annotations

import importlib

#: Stable name -> the class's current location (imported only when a file needs it).
SAVED_NAMES: dict[str, str] = {
    # networks (``model_type`` of a pipeline's network description)
    "jasper": "zoo.speech.jasper.Jasper",
    "deepspeech2": "zoo.speech.deepspeech2.DeepSpeech2",
    "rnn-language-model": "zoo.text.lm.RNNLanguageModel",
    "deep-autoencoder": "zoo.recsys.autoencoder.DeepAutoEncoder",
    # pipelines (``zoo_pipeline`` of config.json)
    "speech-recognizer": "zoo.speech.recognizer.SpeechRecognizer",
    "language-model-pipeline": "zoo.text.pipeline.LanguageModelPipeline",
    "recommender": "zoo.recsys.recommender.Recommender",
    # task LightningModules (``zoo_module`` of a checkpoint)
    "ctc-speech-recognizer": "zoo.lightning_modules.ctc_speech_recognizer.CTCSpeechRecognizer",
    "language-model": "zoo.lightning_modules.language_model.LanguageModel",
    "autoencoder-recommender": "zoo.lightning_modules.autoencoder_recommender.AutoEncoderRecommender",
}

#: Class paths that saved files written by earlier versions of zoo contain -> their stable name.
LEGACY_CLASS_PATHS: dict[str, str] = {
    "zoo.speech.jasper.Jasper": "jasper",
    "zoo.speech.deepspeech2.DeepSpeech2": "deepspeech2",
    "zoo.text.lm.RNNLanguageModel": "rnn-language-model",
    "zoo.recsys.autoencoder.DeepAutoEncoder": "deep-autoencoder",
    "zoo.speech.recognizer.SpeechRecognizer": "speech-recognizer",
    "zoo.text.pipeline.LanguageModelPipeline": "language-model-pipeline",
    "zoo.recsys.recommender.Recommender": "recommender",
    "zoo.lightning_modules.ctc_speech_recognizer.CTCSpeechRecognizer": "ctc-speech-recognizer",
    "zoo.lightning_modules.language_model.LanguageModel": "language-model",
    "zoo.lightning_modules.autoencoder_recommender.AutoEncoderRecommender": "autoencoder-recommender",
}


def class_path(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def saved_name(cls: type) -> str:
    """The name a saved file records for ``cls``: its stable name, else its class path."""
    path = class_path(cls)
    for name, current in SAVED_NAMES.items():
        if current == path:
            return name
    return path


def resolve(name: str) -> type:
    """The class a saved file names: a stable name, a class path of :data:`LEGACY_CLASS_PATHS`, or any
    other ``module.Class`` path. Raises ``ValueError`` naming what could not be found."""
    target = SAVED_NAMES.get(LEGACY_CLASS_PATHS.get(name, name), name)
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ValueError(
            f"{name!r} is neither a saved model name ({', '.join(sorted(SAVED_NAMES))}) nor a dotted class path"
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"cannot import {name!r}" + (f" (at {target})" if target != name else "") + f": {error}"
        ) from error
