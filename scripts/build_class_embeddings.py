"""Regenerate the bundled model's shipped first-call embeddings (class_embeddings.safetensors).

Without them, the first ``dermfm diagnose`` after install encodes every ``class x template``
prompt of its label set with the text tower (over 2,000 prompts for ``all``: about 7 s on 2 CPU
cores, after building MiniLM), and the first ``dermfm concepts`` / ``dermfm consult`` encode the
concept and modality prompts. This script computes, with the bundled model's current weights and
an empty cache, what those first calls encode, through the same code paths:

* the class embeddings of every packaged label set (``dermfm.knowledge.label_set_names()``) with
  the default templates of ``ZeroShotClassifier`` and ``dermfm diagnose`` (``skin8``; the
  assistant's label set is one of them);
* the prompt embeddings of every packaged concept and of the protocol's reference prompts
  (``dermfm concepts``, the characteristics of ``dermfm consult``);
* the modality prompts of ``dermfm consult``;
* the model fingerprint that a shipped adapter checks before it is used (``dermfm diagnose`` with
  a label set that has one, ``dermfm consult``);

and writes them, float32 and named by the content keys the cache looks them up by, into
``src/dermfm/models/bundled/class_embeddings.safetensors``, with the weights' SHA-256 in the
file's metadata. The keys hash the weights and config files' content, the class names and the
templates, so a retrained model ignores a stale file instead of using it. This script is the only
source of the file: re-run it whenever the bundled weights, the label sets, the templates, the
concepts, the consultation's settings or the adapters' fingerprint change
(``tests/test_models_bundled.py`` fails while the file is stale).

    python scripts/build_class_embeddings.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from dermfm import cache
from dermfm.adapters import model_fingerprint
from dermfm.assistant.consult import modality_scores
from dermfm.concepts import ConceptAnnotator
from dermfm.knowledge import label_set_names
from dermfm.models import DermModel, bundled, load_model
from dermfm.zeroshot import ZeroShotClassifier

EXAMPLE = Path(str(resources.files("dermfm.examples") / "synthetic_lesion.jpg"))


def compute_entries() -> tuple[dict[str, torch.Tensor], DermModel]:
    """Every text embedding the first calls encode, by cache key, and the model.

    Runs the real calls on the example image with an empty cache folder and no shipped file
    consulted, then gathers what they stored.
    """
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DERMFM_CACHE"] = tmp
        model = load_model("dermfm-bundled")
        cache.shipped_files.clear()  # compute afresh: nothing comes from the file being replaced
        embedding = model.embed_images([EXAMPLE]).vectors
        for name in label_set_names():
            ZeroShotClassifier(model, name).predict_proba(embedding)
        ConceptAnnotator(model).scores(embedding)
        modality_scores(model, embedding)
        model_fingerprint(model)
        kinds = sorted(p.name for p in Path(tmp).iterdir() if p.is_dir())
        entries = {k: v for kind in kinds for k, v in cache.stored_tensors(kind).items()}
    return entries, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = bundled.weights_dir()
    entries, model = compute_entries()
    metadata = {
        "model": model.name,
        "model_cache_key": model.cache_key,
        **bundled.content_fingerprint(folder),
        "label_sets": ",".join(label_set_names()),
        "written_by": "scripts/build_class_embeddings.py",
    }
    target = folder / bundled.EMBEDDINGS_FILE
    save_file({k: v.float().contiguous() for k, v in entries.items()}, str(target), metadata)
    target.chmod(0o644)  # package data, readable like the weights whatever the umask
    rows = sum(v.shape[0] for v in entries.values())
    print(
        f"{target}: {len(entries)} entries, {rows} float32 vectors, "
        f"{target.stat().st_size / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()
