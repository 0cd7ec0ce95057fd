#!/bin/sh
# The learned-scheduler table of docs/schedulers.md: both recipes, 3 seeds per setting, and the
# comparisons against fixed periods, random at matched fraction and the hindsight frontier.
#
# Usage: benchmarks/schedulers.sh CACHE FRONTIER OUT [EVAL_CACHE EVAL_FRONTIER]
#
#   CACHE        feature cache to train on (and to compare on, val split), e.g. data/streams.h5
#   FRONTIER     `python benchmarks/headroom.py --save` file measured on CACHE's val split
#   OUT          folder for the runs and the comparisons
#   EVAL_CACHE   optional: a second benchmark (another seed; only its val split is needed)
#   EVAL_FRONTIER  the headroom file measured on EVAL_CACHE
#
# Training takes about 2 minutes per Keyframe-v0 run, 5 per Interleave-v0 Double DQN run,
# 7 per Interleave-v0 CEM run and 0.7 per Keyframe-v0 CEM run on one core (27 + 18 + 12 + 21
# runs); run it with OMP_NUM_THREADS=1. KEYFRAME_GAMMAS, INTERLEAVE_GAMMAS, CEM_GAMMAS and
# KEYFRAME_CEM_GAMMAS replace the speed-reward grids (docs/schedulers.md's `detection` table
# uses smaller ones); RECIPES picks the recipes (default: keyframe interleave cem; add
# keyframe-cem for the Keyframe-v0 CEM rows).
set -eu
if [ $# -ne 3 ] && [ $# -ne 5 ]; then
    sed -n '5,12p' "$0" >&2
    exit 2
fi
CACHE=$1
FRONTIER=$2
OUT=$3
GISTGYM=${GISTGYM:-gistgym}
KEYFRAME_GAMMAS=${KEYFRAME_GAMMAS:--0.08 -0.05 0.03 0.2 0.8 1.6 3 6 12}
INTERLEAVE_GAMMAS=${INTERLEAVE_GAMMAS:-0.3 0.5 0.8 1.3 2 3}
CEM_GAMMAS=${CEM_GAMMAS:-0.6 0.8 1.6 4}
KEYFRAME_CEM_GAMMAS=${KEYFRAME_CEM_GAMMAS:--0.05 0.05 0.2 0.8 1.6 3 6}
RECIPES=${RECIPES:-keyframe interleave cem}
has() { case " $RECIPES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Keyframe-v0: Double DQN, the MLP on the flow cues, the `matched` signal reward; gamma is the
# speed reward of propagating (negative ones buy keyframes beyond what the signal pays for).
if has keyframe; then
    $GISTGYM train --cache "$CACHE" --env gistgym/Keyframe-v0 --reward matched --seeds 3 \
        --gamma-sweep --gammas $KEYFRAME_GAMMAS --total-timesteps 100000 \
        --out "$OUT/keyframe"
fi
# Interleave-v0: Double DQN, the MLP on pooled Eq. 1 state + history + runtime cues, `matched`.
if has interleave; then
    $GISTGYM train --cache "$CACHE" --reward matched --cues --extractor mlp --seeds 3 \
        --gamma-sweep --gammas $INTERLEAVE_GAMMAS --total-timesteps 60000 \
        --out "$OUT/interleave"
fi
# Interleave-v0: the linear scheduler on the runtime cues, cross-entropy method, `matched`.
if has cem; then
    $GISTGYM train --cache "$CACHE" --algo cem --reward matched --cues --seeds 3 \
        --gamma-sweep --gammas $CEM_GAMMAS --cem-population 12 --cem-clips 32 --cem-iterations 6 --cem-elite 0.34 \
        --eval-every 0 --eval-videos 4 --out "$OUT/interleave-cem"
fi
# Keyframe-v0: the linear scheduler on the flow cues and the distance, cross-entropy method, `matched`.
if has keyframe-cem; then
    $GISTGYM train --cache "$CACHE" --env gistgym/Keyframe-v0 --algo cem --reward matched --seeds 3 \
        --gamma-sweep --gammas $KEYFRAME_CEM_GAMMAS --cem-population 12 --cem-clips 32 --cem-iterations 6 \
        --cem-elite 0.34 --eval-every 0 --eval-videos 4 --out "$OUT/keyframe-cem"
fi

compare() {  # compare CACHE FRONTIER NAME
    if has keyframe; then
        $GISTGYM compare --cache "$1" --env gistgym/Keyframe-v0 --runs "$OUT/keyframe" --frontier "$2" \
            --out "$OUT/compare-$3-keyframe"
    fi
    if has interleave; then
        $GISTGYM compare --cache "$1" --runs "$OUT/interleave" --frontier "$2" --out "$OUT/compare-$3-interleave"
    fi
    if has cem; then
        $GISTGYM compare --cache "$1" --runs "$OUT/interleave-cem" --frontier "$2" \
            --out "$OUT/compare-$3-interleave-cem"
    fi
    if has keyframe-cem; then
        $GISTGYM compare --cache "$1" --env gistgym/Keyframe-v0 --runs "$OUT/keyframe-cem" --frontier "$2" \
            --out "$OUT/compare-$3-keyframe-cem"
    fi
}
compare "$CACHE" "$FRONTIER" val
if [ $# -eq 5 ]; then
    compare "$4" "$5" eval
fi
