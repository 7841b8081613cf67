#!/usr/bin/env bash
# Build the speech corpus and its code cache (if missing) and train the small speech LM in the background,
# resuming from its last checkpoint. Runs and data live outside the work tree (RUNS, DATA) so that a new
# checkout keeps them; the log goes to RUNS/speech_small.log.
# Usage: [DEVICES=2] [INIT_FROM=MODEL_DIR] bash scripts/train_speech_small.sh
# (DEVICES=2: two DDP processes of one thread each, twice the conversations per step, when both cores are free;
# INIT_FROM: start from an exported model's weights and tokenizer instead of random weights.)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per training; the other stays free
# jemalloc keeping freed pages: glibc returned and re-faulted the step's large buffers every step
# (30-50% of the time in the kernel); with it a step of 8 conversations took 16% less time. Pages freed for
# longer than 30 s (10 steps) go back to the system: with no decay at all each DDP process grew to 13 GB.
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
if [ -f "$JEMALLOC" ]; then
    export LD_PRELOAD="$JEMALLOC${LD_PRELOAD:+:$LD_PRELOAD}" MALLOC_CONF=${MALLOC_CONF:-dirty_decay_ms:30000,muzzy_decay_ms:30000}
fi
RUNS=${RUNS:-/work/cadenza-runs}
DATA=${DATA:-/work/cadenza-data}
mkdir -p "$RUNS" "$DATA"
[ -e data ] || ln -s "$DATA" data
# incremental: a complete corpus is only checked (the 8 h of the codec and attempt 1 grew to 24 h at LM step ~1,900)
cadenza data speech data/speech --hours 24 --workers 1 > "$RUNS/speech_corpus.log" 2>&1
cadenza speech encode-corpus data/speech > "$RUNS/encode_corpus.log" 2>&1  # incremental: only new utterances
# where each transcript token is spoken, for the guided attention (incremental); tokens as the run will read them
TOKENIZER="$RUNS/speech_small/tokenizer.json"
[ -f "$TOKENIZER" ] || TOKENIZER=${INIT_FROM:+$INIT_FROM/tokenizer.json}
cadenza speech align-corpus data/speech ${TOKENIZER:+--text-tokenizer "$TOKENIZER"} > "$RUNS/align_corpus.log" 2>&1
DEVICES=${DEVICES:-1}
strategy=$([ "$DEVICES" -gt 1 ] && echo ddp || echo auto)
nohup cadenza speech train --config configs/speech_small.yaml --resume train.run_dir="$RUNS/speech_small" \
    train.devices="$DEVICES" train.strategy="$strategy" ${INIT_FROM:+model.init_from="$INIT_FROM"} \
    >> "$RUNS/speech_small.log" 2>&1 &
echo "training in the background; progress: $RUNS/speech_small/logs/version_*/metrics.csv"
