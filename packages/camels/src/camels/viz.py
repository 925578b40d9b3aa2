"""Pictures of learned token weights: a TSV, an HTML page (tokens shaded by weight) and a PNG."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_weight_views(
    docs: Sequence[Sequence[tuple[str, float]]], out_prefix: str | os.PathLike, title: str = ""
) -> list[Path]:
    """`docs` holds, per document, (token text, weight) pairs. Writes `<prefix>.tsv`, `.html` and `.png`."""
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tsv = prefix.with_suffix(".tsv")
    with open(tsv, "w", encoding="utf-8") as f:
        f.write("doc\tposition\ttoken\tweight\n")
        for d, doc in enumerate(docs):
            for t, (tok, w) in enumerate(doc):
                f.write(f"{d}\t{t}\t{tok!r}\t{w:.6g}\n")
    top = max((w for doc in docs for _, w in doc), default=1.0) or 1.0
    parts = [
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body style='font-family:monospace'>"
    ]
    parts.append(f"<h3>{html.escape(title)} (darker = larger weight; max {top:.4g})</h3>")
    for doc in docs:
        spans = [
            f"<span title='{w:.4g}' style='background: rgba(220,40,40,{min(1.0, w / top):.3f})'>{html.escape(tok)}</span>"
            for tok, w in doc
        ]
        parts.append("<p>" + "".join(spans) + "</p><hr>")
    parts.append("</body></html>")
    page = prefix.with_suffix(".html")
    page.write_text("".join(parts), encoding="utf-8")
    png = prefix.with_suffix(".png")
    doc = docs[0] if docs else []
    toks = doc[:60]
    fig, ax = plt.subplots(figsize=(max(6, len(toks) * 0.25), 3), dpi=110)
    ax.bar(range(len(toks)), [w for _, w in toks], color="tab:red")
    ax.set_xticks(range(len(toks)))
    ax.set_xticklabels([t.replace("\n", "\\n") for t, _ in toks], rotation=90, fontsize=7)
    ax.set_ylabel("token weight")
    ax.set_title(title or "learned token weights")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return [tsv, page, png]


def token_weight_pairs(tokenizer, input_ids, attention_mask, weights) -> list[list[tuple[str, float]]]:
    out = []
    for b in range(input_ids.shape[0]):
        pos = attention_mask[b].nonzero().flatten().tolist()
        out.append(
            [
                (
                    tokenizer.decode([int(input_ids[b, p])], clean_up_tokenization_spaces=False),
                    float(weights[b, p]),
                )
                for p in pos
            ]
        )
    return out
