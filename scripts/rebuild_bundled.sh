#!/usr/bin/env bash
# Rebuild everything that depends on the bundled model's weights, in order, after
# `dermfm train bundled` and copying runs/bundled/stage2/model/* into src/dermfm/models/bundled/.
# Each step is the script or command that alone regenerates its file; figures land in docs/.
#   bash scripts/rebuild_bundled.sh [DATA_ROOT]        (default ../shared/data; about 45 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-../shared/data}"
py=.venv/bin/python
dermfm=.venv/bin/dermfm
bundled=src/dermfm/models/bundled
step() { printf '\n== %s\n' "$*"; }

step "shipped prompt embeddings ($bundled/class_embeddings.safetensors)"
$py scripts/build_class_embeddings.py
step "adapters ($bundled/adapters/; not the assistant's: see docs/assistant.md)"
$py scripts/build_bundled_adapters.py --root "$root" \
    --label-set ham7 --label-set pad6 --label-set f17k21 --label-set sd198 --label-set dermnet
step "assistant calibration ($bundled/assistant/calibration.json), on zero-shot scores"
$dermfm assistant calibrate --root "$root" --overwrite \
    -d ham10000:dermoscopy -d derm7pt:dermoscopy:none -d dermnet_nz:clinical \
    -d fitzpatrick17k_21:clinical -d pad_ufes20:clinical -d sd198_27:clinical
step "sparse autoencoder and its artifact latents ($bundled/sae/)"
$dermfm sae train "$bundled/sae" --root "$root" --overwrite \
    -d ham10000 -d dermnet_nz -d derm7pt -d fitzpatrick17k_21 -d pad_ufes20 -d sd198_27 \
    --artifact-images 2100 --set n_latents=2048
$dermfm sae suppress "$bundled/sae" --root "$root" -d ham10000 -d dermnet_nz --images 150
step "model-card figures (docs/model_card_results.*)"
$py scripts/evaluate_model_card.py --root "$root"
step "artifact suppression figures (docs/artifact_suppression.json)"
$py scripts/measure_artifact_suppression.py
step "assistant safety figures (docs/assistant_safety.json, the table in docs/assistant.md)"
# the urgent rules' thresholds are data: re-tune them on validation splits with
#   $py scripts/measure_assistant_safety.py --tune --root "$root"
# and set src/dermfm/assistant/rules.yaml from docs/assistant_rule_tuning.json by hand
$py scripts/measure_assistant_safety.py --root "$root" --benign-per-dataset 120
