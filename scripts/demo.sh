#!/usr/bin/env bash
# The demo `make demo` runs: real music in, tokens, a synthetic piece in a known form out, rendered to audio;
# then the shipped generator writes new pieces in a requested form, rendered and judged.
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
