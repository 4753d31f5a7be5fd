"""A bundle's README.md: a model card with YAML front matter in the Hugging Face Hub layout (library_name, tags,
datasets, metrics with values in model-index, pipeline_tag), then the lineage, the recipe and how to run it."""

from __future__ import annotations

import json

# Hub dataset ids of the built-in datasets; an image folder has none
HUB_DATASETS = {
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
}
LIBRARY = {"onnxruntime": "onnx", "torch": "pytorch", "openvino": "openvino"}


def to_yaml(value, indent: int = 0) -> list[str]:
    """Block-style YAML lines of plain data; every scalar is written as JSON, which YAML reads as the same value."""
    pad = " " * indent
    lines = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        head = f"{pad}{key}:" if isinstance(value, dict) else f"{pad}-"
        if isinstance(item, (dict, list)) and item:
            if isinstance(value, list) and isinstance(item, dict):  # "- key: value" with the rest aligned under it
                rest = to_yaml(item, indent + 2)
                lines += [f"{pad}- {rest[0].lstrip()}", *rest[1:]]
            else:
                lines += [head, *to_yaml(item, indent + 2)]
        else:
            lines.append(f"{head} {json.dumps(item)}")
    return lines


def front_matter(config: dict) -> dict:
    """The card's metadata block (a dict, dumped as YAML)."""
    runtime = config["runtime"]["name"]
    acc = config["expected"]["accuracy"]
    hub = HUB_DATASETS.get(config["dataset"])
    metrics = [
        dict(type="accuracy", name=f"top-{k} accuracy", value=round(float(acc[f"top{k}"]), 4))
        for k in (1, 5)
        if acc.get(f"top{k}") is not None
    ]
    meta = dict(
        library_name=LIBRARY[runtime],
        pipeline_tag="image-classification",
        tags=["image-classification", "deploybench", LIBRARY[runtime], config["model"], config["format"]],
        datasets=[hub] if hub else [],
        metrics=["accuracy"],
    )
    meta["model-index"] = [
        dict(
            name=f"{config['model']}-{config['variant']}",
            results=[
                dict(
                    task=dict(type="image-classification", name="Image Classification"),
                    dataset=dict(name=config["dataset"], type=hub or config["dataset"], split="test"),
                    metrics=metrics,
                )
            ],
        )
    ]
    return meta


def _latency_lines(config: dict) -> list[str]:
    rows = config["expected"]["latency"]
    if not rows:
        return ["Not measured yet (`deploybench profile run --variant " + config["variant"] + "`)."]
    lines = [
        "| machine | backend | batch | threads | p50 (ms) | p90 (ms) | images/s | stable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['machine']} | {r['backend']} | {r['batch_size']} | {r['threads']} | "
            f"{r['latency_ms_p50']:.3f} | {(r['latency_ms_p90'] or 0):.3f} | "
            f"{(r['throughput_per_s'] or 0):.0f} | {'yes' if r['stable'] else 'no'} |"
        )
    return lines


def model_card(config: dict) -> str:
    """README.md of a bundle from its config.json contents."""
    acc = config["expected"]["accuracy"]
    inp = config["input"]
    acc_line = (
        f"Top-1 {100 * acc['top1']:.2f}% on the {config['dataset']} test split"
        + (f", measured with {acc['backend']} on {acc['machine']}." if acc.get("backend") else " (training).")
        if acc
        else "Accuracy not measured."
    )
    lineage = [
        f"{i + 1}. `{p['id']}` {p['stage']} ({p['format']}): `{json.dumps(p['config'], sort_keys=True)}`"
        for i, p in enumerate(config["lineage"])
    ]
    body = [
        f"# {config['model']} on {config['dataset']} ({config['chain']})",
        "",
        f"Variant `{config['variant']}`, format `{config['format']}`, runtime {config['runtime']['name']} "
        f"{config['runtime']['version']}"
        + (f", ONNX opset {config['runtime']['opset']}" if config["runtime"]["opset"] else "")
        + ".",
        "",
        "## Input",
        "",
        f"{inp['layout']} {inp['dtype']}, shape {inp['shape']} (batch {inp['batch']}), {inp['color']}; "
        f"{inp['scale']} with mean {config['mean']} and std {config['std']}.",
        "",
        f"Classes ({len(config['classes'])}): " + ", ".join(config["classes"]),
        "",
        "## Expected accuracy",
        "",
        acc_line,
        "",
        "## Expected latency",
        "",
        *_latency_lines(config),
        "",
        "Latencies hold for the machine named; another machine needs its own measurement.",
        "",
        "## Lineage and recipe",
        "",
        "Oldest first; each line is the stage and its full config.",
        "",
        *lineage,
        "",
        "## Use",
        "",
        "```",
        "pip install -r requirements.txt",
        "python predict.py image.png [more.png ...] --top-k 3",
        "```",
        "",
        f"Files: {', '.join(config['files'])}, config.json (everything above as data).",
        *([""] + config["notes"] if config["notes"] else []),
        "",
    ]
    return "---\n" + "\n".join(to_yaml(front_matter(config))) + "\n---\n\n" + "\n".join(body)
