#!/usr/bin/env bash
# Form adherence of a Staria model as its model card measures it: 4 pieces in each of ABA ABAB ABAC ABCA AABB
# (seed 11 or $SEED, 1,024 tokens, folk-tune snippets), judged by `cadenza music evaluate --form` (same-letter sections
# alike >= 0.6, different letters < 0.45). Prints each form's found rate and the total.
# Usage: bash scripts/staria_forms.sh MODEL_DIR OUT_DIR [free|copy]   (~6 min on one busy core)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
model=$1 out=$2 mode=${3:-free}
found=0
for form in ABA ABAB ABAC ABCA AABB; do
  cadenza music generate --model "$model" --form "$form" --num 4 --seed "${SEED:-11}" --max-tokens 1024 --repeat "$mode" \
      --out-dir "$out/$form" > /dev/null 2>&1
  rate=$(cadenza music evaluate "$out/$form" --form "$form" 2>&1 | grep -o 'form_found_rate [0-9]*%' | grep -o '[0-9]*')
  echo "$form ${rate}%"
  found=$((found + rate * 4 / 100))
done
echo "form found, --repeat $mode: $found/20"
