#!/usr/bin/env bash
# Build the data (if missing) and train the small Staria classifier and generator in the background,
# resuming from their last checkpoints. Runs and data live outside the work tree (RUNS, DATA) so that a
# new checkout keeps them; logs go to RUNS/*.log. Usage: [INIT_FROM=MODEL_DIR] bash scripts/train_staria_small.sh [classifier|staria|both|encoder]
# (INIT_FROM: start the generator from an exported model's weights, e.g. src/cadenza/pretrained/staria_small.)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per training
RUNS=${RUNS:-/work/cadenza-runs}
DATA=${DATA:-/work/cadenza-data}  # corpora live outside the work tree too; ./data links to them
mkdir -p "$RUNS" "$DATA"
[ -e data ] || ln -s "$DATA" data
[ -f data/music21/manifest.jsonl ] || cadenza data music21 data/music21 --workers 2 > "$RUNS/music21.log" 2>&1
[ -f data/synth_768/manifest.jsonl ] || cadenza data synth data/music21 data/synth_768 --per-form 1500 --seed 0 \
    --min-tokens 384 --max-tokens 768 > "$RUNS/synth_768.log" 2>&1
which=${1:-both}
if [ "$which" = classifier ] || [ "$which" = both ]; then
  nohup cadenza music train classifier --config configs/staria_classifier_small.yaml --resume \
      train.run_dir="$RUNS/classifier_small_v3" >> "$RUNS/classifier_small_v3.log" 2>&1 &
fi
if [ "$which" = staria ] || [ "$which" = both ]; then
  nohup cadenza music train staria --config configs/staria_small.yaml --resume \
      train.run_dir="$RUNS/staria_v1_hint" ${INIT_FROM:+model.init_from="$INIT_FROM"} >> "$RUNS/staria_v1_hint.log" 2>&1 &
fi
if [ "$which" = encoder ]; then  # the contrastive snippet encoder (NICE: share a core with the campaigns)
  # The key-aware run continues the transposing run's step-1,950 weights (configs/staria_encoder_keyed.yaml).
  nohup nice -n "${NICE:-0}" cadenza music train encoder --config configs/staria_encoder_keyed.yaml --resume \
      model.init_from="$RUNS/staria_encoder_step1950" >> "$RUNS/staria_encoder_keyed.log" 2>&1 &
  # With the kernel's autogroups (one per session, e.g. per setsid), nice only ranks processes of one
  # session: a job started from another session also needs its session's nice, else it takes an equal share.
  [ -w "/proc/$!/autogroup" ] && echo "${NICE:-0}" > "/proc/$!/autogroup" || true
fi
echo "training in the background; progress: $RUNS/*/logs/version_*/metrics.csv"
