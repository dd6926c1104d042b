"""`predict`: the digit in each image, one line per file for people, or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mnist_tasks.cli.commands import s3_client_if

PREDICT_EPILOG = """\
--model is one of:
  latest                 the version latest.json in --models-uri points at (default)
  VERSION                that version in --models-uri, e.g. 20261123020000
  s3://…/VERSION/        a version directory (or its model.keras) in any registry;
  s3://…/latest.json       or the latest version of that registry
  PATH.keras             a local model file. If a manifest.json sits beside it (a
                         downloaded version directory), the file must match the sha256
                         it records; without one it is loaded unverified, with a warning.
A model in S3 is loaded only once its sha256 matches its manifest. Keras loads it in
safe mode (no arbitrary code).

Each image is first made to look like an MNIST digit (a centred 28x28 field); the
steps are in the docstring of mnist_tasks/inference/preprocess.py.

Exit status: 0 when every file was read (blank or unsure ones included), 1 when
some file could not be read (the others are still predicted), 2 when nothing could
be predicted (bad model, bad arguments).
"""


def predict(args: argparse.Namespace) -> None:
    from mnist_tasks.inference.predict import expand_inputs, load_model_for_prediction, predict_files
    from mnist_tasks.registry import parse_model_reference, training_label

    paths = expand_inputs(args.inputs)
    local = parse_model_reference(args.model, models_uri=args.models_uri).path is not None
    model, source = load_model_for_prediction(
        model=args.model, models_uri=args.models_uri, s3_client=s3_client_if(not local)
    )
    if source["verified_against"] is None:
        print(f"warning: no manifest.json beside {args.model}: loading it unverified", file=sys.stderr)
    rows = predict_files(
        model=model,
        paths=paths,
        min_confidence=args.min_confidence,
        multi=args.multi,
        save_preprocessed=args.save_preprocessed,
    )
    if args.json:
        json.dump({"model": source, "predictions": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        version = "unpublished" if source["version"] is None else f"version {source['version']}"
        trained = training_label(source)
        print(f"model: {source['model_uri']} ({version}, {trained})", file=sys.stderr)
        for row in rows:
            print(_prediction_line(row, min_confidence=args.min_confidence))
    if any(row["status"] == "error" for row in rows):
        sys.exit(1)  # the other files were predicted; scripts still see the failure


def _prediction_line(row: dict[str, Any], *, min_confidence: float) -> str:
    """One human-readable line per file: `name: digit  p=…  top 3: …`, or what went wrong."""
    name = row["file"]
    if row["status"] == "error":
        return f"{name}: error: {row['error'].removeprefix(f'{name}: ')}"
    if row["status"] == "blank":
        return f"{name}: blank (no digit found)"
    if "number" in row:
        digits = ", ".join(f"{d['top3'][0][0]} p={d['probability']:.3f}" for d in row["digits"])
        unsure = f"  (? = below --min-confidence {min_confidence})" if "?" in row["number"] else ""
        return f"{name}: {row['number']}  digits: {digits}{unsure}"
    top3 = ", ".join(f"{digit} {p:.3f}" for digit, p in row["top3"])
    if row["digit"] is None:
        best, p = row["top3"][0]
        return f"{name}: no confident digit (best {best} at p={p:.3f} < {min_confidence})  top 3: {top3}"
    return f"{name}: {row['digit']}  p={row['probability']:.3f}  top 3: {top3}"
