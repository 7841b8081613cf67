#!/usr/bin/env bash
# Encode and align the speech corpus for an LM run (incremental: only new utterances) and train the LM in the
# background, resuming from its last checkpoint. Runs and data live outside the work tree (RUNS, DATA) so that
# a new checkout keeps them; the log goes to RUNS/<run name>.log, the run name being the config's file name.
# Usage: [CONFIG=configs/speech_v3.yaml] [DEVICES=2] [INIT_FROM=MODEL_DIR] bash scripts/train_speech.sh
# (CONFIG: the run's recipe; its data.codec is the audio tokenizer whose codes it learns (default: the shipped one).
# DEVICES=2: two DDP processes of one thread each, twice the conversations per step, when both cores are free;
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
CONFIG=${CONFIG:-configs/speech_v3.yaml}
NAME=$(basename "$CONFIG" .yaml)
RUNS=${RUNS:-/work/cadenza-runs}
DATA=${DATA:-/work/cadenza-data}
mkdir -p "$RUNS" "$DATA"
[ -e data ] || ln -s "$DATA" data
[ -f data/speech/manifest.jsonl ] || cadenza data speech data/speech --hours 30 --workers 1 > "$RUNS/speech_corpus.log" 2>&1
CODEC=$(python -c "import sys; from cadenza.higgs_audio.train import default_config; from cadenza.core.config import load_config
print(load_config(sys.argv[1], [], default_config())['data']['codec'] or '')" "$CONFIG")
cadenza speech encode-corpus data/speech ${CODEC:+--codec "$CODEC"} > "$RUNS/encode_corpus_$NAME.log" 2>&1
# where each transcript token is spoken, for the transcript pointer (incremental); tokens as the run will read them
TOKENIZER="$RUNS/$NAME/tokenizer.json"
[ -f "$TOKENIZER" ] || TOKENIZER=${INIT_FROM:+$INIT_FROM/tokenizer.json}
cadenza speech align-corpus data/speech ${TOKENIZER:+--text-tokenizer "$TOKENIZER"} ${CODEC:+--codec "$CODEC"} \
    > "$RUNS/align_corpus_$NAME.log" 2>&1
DEVICES=${DEVICES:-1}
strategy=$([ "$DEVICES" -gt 1 ] && echo ddp || echo auto)
nohup cadenza speech train --config "$CONFIG" --resume train.run_dir="$RUNS/$NAME" \
    train.devices="$DEVICES" train.strategy="$strategy" ${INIT_FROM:+model.init_from="$INIT_FROM"} \
    >> "$RUNS/$NAME.log" 2>&1 &
echo "training in the background; progress: $RUNS/$NAME/logs/version_*/metrics.csv"
