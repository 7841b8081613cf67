#!/usr/bin/env bash
# The demo `make demo` runs: real music in, tokens, a synthetic piece in a known form out, rendered to audio;
# then the shipped generator writes new pieces in a requested form, rendered and judged; then speech: the audio
# tokenizer round trip, and (once a speech LM is shipped) a sentence, a cloned voice and a dialogue.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1
OUT=out/demo
mkdir -p "$OUT"

echo "== 1. a small real corpus: 40 Bach chorales and 40 folk tunes from the music21 corpus"
cadenza data music21 "$OUT/corpus" --sources bach,folk --limit 40 --workers 2 > "$OUT/corpus.log"
tail -n 6 "$OUT/corpus.log"

echo "== 2. tokenize a chorale and turn the tokens back into MIDI"
chorale=$(ls "$OUT"/corpus/midi/bach/*.mid | head -n 1)
cadenza music tokenize "$chorale" --out "$OUT/tokens.jsonl"
python - "$OUT/tokens.jsonl" <<'PY'
import json, sys
row = json.loads(open(sys.argv[1]).readline())
print(f"{row['path']}: {len(row['tokens'])} tokens; first ones: {row['tokens'][:8]}")
PY
cadenza music detokenize "$OUT/tokens.jsonl" --out-dir "$OUT/roundtrip"

echo "== 3. synthetic pieces stitched into known forms, one per form"
cadenza data synth "$OUT/corpus" "$OUT/synth" --per-form 1 --seed 0 | tail -n 3
cadenza data export "$OUT/synth" "$OUT/aba" --form ABA --limit 1

echo "== 4. render the ABA piece (section markers A, B, A inside) to audio"
cadenza music render "$OUT"/aba/*.mid --out-dir "$OUT/audio"
ls -l "$OUT"/aba/*.mid "$OUT"/audio/*.wav

echo "== 5. the shipped Staria generator writes a piece in ABAC form (WAV + piano roll), and we judge its form"
cadenza music generate --form ABAC --num 2 --seed 0 --out-dir "$OUT/generated" --wav --png
cadenza music evaluate "$OUT/generated" --form ABAC | tail -n 12

echo "== 6. the audio tokenizer (v3): a voice preset to 8 codebooks at 25 frames/s and back to 24 kHz speech"
cadenza speech codec encode src/cadenza/pretrained/voices/heart.wav --out-dir "$OUT/codes"
cadenza speech codec decode "$OUT/codes/heart.npy" --out-dir "$OUT/speech"
ls -l "$OUT/codes/heart.npy" "$OUT/speech/heart.wav"

echo "== 7. the speech LM (a preview, see its MODEL_CARD.md): say a sentence, clone a voice preset, write a two-speaker dialogue (each the best of 4 takes)"
if [ -f src/cadenza/pretrained/higgs_audio_small/config.json ]; then
  cadenza speech generate --transcript "Good morning. The coffee is ready, and the sun is out." --voice joe \
      --seed 0 --best-of 4 --out "$OUT/speech/said.wav"
  cadenza speech generate --transcript "I have never been to this part of town before." \
      --ref-audio src/cadenza/pretrained/voices/heart.wav --ref-text "$(cat src/cadenza/pretrained/voices/heart.txt)" \
      --seed 0 --best-of 4 --out "$OUT/speech/cloned.wav"
  cadenza speech generate --transcript "[SPEAKER0] Are you coming tonight? [SPEAKER1] Yes, I will be there at eight." \
      --chunk-method speaker --seed 0 --best-of 4 --out "$OUT/speech/dialogue.wav"
  ls -l "$OUT"/speech/{said,cloned,dialogue}.wav
else
  echo "the shipped speech LM (src/cadenza/pretrained/higgs_audio_small) is missing from this checkout"
fi
