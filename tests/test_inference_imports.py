"""Generating and evaluating speech loads no training code: the inference entry points import neither Lightning
nor the speech LM's data and training modules (checked in a fresh interpreter, whose sys.modules is clean)."""

from __future__ import annotations

import json
import subprocess
import sys

INFERENCE = ["cadenza.higgs_audio.engine", "cadenza.higgs_audio.speak", "cadenza.higgs_audio.tts_eval",
             "cadenza.higgs_audio.codec"]
TRAINING = ["lightning", "cadenza.higgs_audio.dataset", "cadenza.higgs_audio.aligner", "cadenza.higgs_audio.collator",
            "cadenza.higgs_audio.train", "cadenza.core.training"]


def test_speech_inference_imports_no_training_module():
    code = (f"import importlib, json, sys\nfor name in {INFERENCE!r}: importlib.import_module(name)\n"
            f"print(json.dumps([m for m in {TRAINING!r} if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
