"""Per-token loss weightings: the learned CaMeLS weighting model and the uniform, salient-span (spaCy) and TF-IDF
baselines. Every weighting is a callable `(input_ids, attention_mask) -> [B, L]` float tensor on the ids'
device, 0 on padding; the weight at position t multiplies the loss of predicting token t."""

from __future__ import annotations

import collections
import inspect
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lmlab.errors import LmlabError

NON_LINEARITIES = ("softplus", "sigmoid", "exp", "gelu", "none")
SSM_IGNORED = frozenset({"TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})
WORD_PATTERN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn TfidfVectorizer's default token_pattern


def _non_linearity(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "softplus":
        return lambda z: F.softplus(z, beta=3.0)
    if name == "sigmoid":
        return torch.sigmoid
    if name == "exp":
        return torch.exp
    if name == "gelu":
        return F.gelu
    if name in ("none", None):
        return lambda z: z
    raise ValueError(f"non_linearity must be one of {', '.join(NON_LINEARITIES)}, got {name!r}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left-padded rows see the same positions as unpadded ones."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class CaMeLSWeightModel(nn.Module):
    """Causal encoder + MLP head (hidden → `hidden` → GELU → 1) + non-linearity, times the attention mask.

    The head's output layer is zero-initialised, so at initialisation every real token gets nl(0)
    (ln 2 / 3 = 0.2310 for softplus with β = 3). Unlike the reference, the attention mask (and mask-derived
    positions) reach the encoder, so left padding is handled, and the output is always [B, L].
    """

    def __init__(
        self,
        encoder: Any,
        hidden: int = 128,
        non_linearity: str = "softplus",
        normalize: bool = False,
        freeze_base: bool = False,
        attn_implementation: str | None = None,
    ):
        super().__init__()
        from transformers import AutoModel, PretrainedConfig, PreTrainedModel

        if isinstance(encoder, PretrainedConfig):
            encoder = AutoModel.from_config(encoder, attn_implementation=attn_implementation or "eager")
        elif isinstance(encoder, str | os.PathLike):
            encoder = AutoModel.from_pretrained(str(encoder), attn_implementation=attn_implementation)
        if not isinstance(encoder, PreTrainedModel):
            raise TypeError(
                f"encoder must be a transformers model, a config or a path, got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.non_linearity = non_linearity
        self.normalize = normalize
        self.freeze_base = freeze_base
        self._nl = _non_linearity(non_linearity)
        self._takes_positions = "position_ids" in inspect.signature(encoder.forward).parameters
        width = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)
        if freeze_base:
            self.encoder.requires_grad_(False)

    def hparams(self) -> dict[str, Any]:
        return {
            "encoder_config": self.encoder.config.to_dict(),
            "hidden": self.head[0].out_features,
            "non_linearity": self.non_linearity,
            "normalize": self.normalize,
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._takes_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_base):
            hidden = self.encoder(**kwargs).last_hidden_state
        z = self.head(hidden.to(self.head[0].weight.dtype)).squeeze(
            -1
        )  # [B, L]; squeeze only the head's width
        mask = attention_mask.to(z.dtype)
        weights = self._nl(z) * mask
        if self.normalize:
            weights = weights * mask.sum(-1, keepdim=True) / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        return weights

    def save(self, path: str | os.PathLike) -> Path:
        """A checkpoint dict {"state_dict", "hparams"} written atomically with torch.save."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"state_dict": self.state_dict(), "hparams": self.hparams()}, tmp)
        os.replace(tmp, path)
        return path

    def save_pretrained(self, folder: str | os.PathLike, tokenizer: Any = None) -> Path:
        """A folder that transformers' AutoModel loads as the encoder (`save_pretrained`), with the head in
        `weighting_head.safetensors` and the head's options in `camels_weighting.json` (what `from_checkpoint`
        needs besides), and the tokenizer if given. Written into a temporary folder renamed over `folder`."""
        import json
        import shutil

        from lmlab.io import save_safetensors

        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.encoder.save_pretrained(tmp)
        save_safetensors(self.head.state_dict(), tmp / HEAD_FILE)
        options = {k: v for k, v in self.hparams().items() if k != "encoder_config"}
        (tmp / OPTIONS_FILE).write_text(json.dumps(options, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder

    def load(self, path: str | os.PathLike) -> CaMeLSWeightModel:
        """Load a checkpoint strictly: missing or unexpected keys and shape mismatches are an LmlabError."""
        state = _read_checkpoint(path)["state_dict"]
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise LmlabError(
                f"weight-model checkpoint {path} does not match the model: {' '.join(first[:3])[:300]}"
            ) from None
        return self

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> CaMeLSWeightModel:
        """Rebuild the model from the hyper-parameters stored in a checkpoint (a `.pt` of `save`, or a folder of
        `save_pretrained` such as meta-train's `model/`), then load it strictly."""
        from transformers import AutoConfig

        if Path(path).is_dir():
            return cls._from_folder(Path(path))
        hp = _read_checkpoint(path).get("hparams")
        if hp is None:
            raise LmlabError(f"{path} has no 'hparams'; build the model yourself and call .load(path)")
        enc = dict(hp["encoder_config"])
        model_type = enc.pop("model_type")
        config = AutoConfig.for_model(model_type, **enc)
        model = cls(config, hidden=hp["hidden"], non_linearity=hp["non_linearity"], normalize=hp["normalize"])
        return model.load(path)

    @classmethod
    def _from_folder(cls, folder: Path) -> CaMeLSWeightModel:
        import json

        from lmlab.io import load_safetensors
        from transformers import AutoModel

        if not (folder / OPTIONS_FILE).is_file():
            raise LmlabError(
                f"{folder} is not a CaMeLS weighting model (no {OPTIONS_FILE}); pass meta-train's model/ folder "
                "or a .pt weighting-model checkpoint"
            )
        options = json.loads((folder / OPTIONS_FILE).read_text(encoding="utf-8"))
        try:
            encoder, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
        except (OSError, ValueError) as err:
            raise LmlabError(f"cannot load the weighting model's encoder from {folder}: {err}") from None
        wrong = [
            k for key in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info.get(key, ())
        ]
        if wrong:
            raise LmlabError(
                f"the encoder in {folder} does not match its config: {[str(k) for k in wrong][:3]}"
            )
        model = cls(encoder, **options)
        try:
            model.head.load_state_dict(load_safetensors(folder / HEAD_FILE), strict=True)
        except RuntimeError as err:
            first = " ".join(str(err).strip().splitlines()[:3])[:300]
            raise LmlabError(f"{folder / HEAD_FILE} does not match the head: {first}") from None
        return model


HEAD_FILE = "weighting_head.safetensors"
OPTIONS_FILE = "camels_weighting.json"


def _read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    if not Path(path).is_file():
        raise LmlabError(
            f"weight-model checkpoint {path} does not exist; pass weight_model_path=<meta-train output>/model"
        )
    from camels.models import load_torch_file

    ckpt = load_torch_file(path, "weight-model checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise LmlabError(f"{path} is not a weight-model checkpoint (no 'state_dict' key)")
    return ckpt


class UniformWeights:
    """w = scalar · mask: plain fine-tuning under the weighted loss's normalisation."""

    def __init__(self, scalar: float = 1.0):
        self.scalar = scalar

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.scalar * attention_mask.to(torch.float32)


def _token_spans(token_texts: Sequence[str]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for text in token_texts:
        spans.append((start, start + len(text)))
        start += len(text)
    return spans


def _per_token_max(char_values: np.ndarray, token_texts: Sequence[str]) -> list[float]:
    return [float(char_values[a:b].max()) if b > a else 0.0 for a, b in _token_spans(token_texts)]


# ----------------------------------------------------------------------------------------- salient spans (spaCy)


def ssm_token_weights(
    token_texts: Sequence[str], nlp: Callable[[str], Any], ignore: Sequence[str] = SSM_IGNORED
) -> list[int]:
    """1 for a token that has a character inside a named-entity (or date) spaCy token whose type is not in
    `ignore`, else 0. The text is the concatenation of `token_texts`; spaCy tokens are located by searching
    their text left to right from the previous match's end (as the reference does)."""
    text = "".join(token_texts)
    salient = np.zeros(len(text) + 1, dtype=np.float32)
    position = 0
    for tok in nlp(text):
        found = text.find(tok.text, position)
        if found < 0:
            continue
        end = found + len(tok.text)
        if tok.ent_type_ and tok.ent_type_ not in ignore:
            salient[found:end] = 1.0
        position = end
    return [int(v) for v in _per_token_max(salient, token_texts)]


def rule_based_nlp() -> Any:
    """A spaCy pipeline without a statistical model: `spacy.blank("en")` + an entity ruler tagging dates
    (month names, years), numbers (CARDINAL) and runs of capitalised non-stop-words (PERSON). For tests and the
    offline reproduction; the paper used `en_core_web_sm`."""
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    months = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ]
    ruler.add_patterns(
        [
            {
                "label": "DATE",
                "pattern": [
                    {"LOWER": {"IN": months}},
                    {"IS_DIGIT": True, "OP": "?"},
                    {"TEXT": ",", "OP": "?"},
                    {"SHAPE": "dddd", "OP": "?"},
                ],
            },
            {"label": "DATE", "pattern": [{"SHAPE": "dddd"}]},
            {"label": "CARDINAL", "pattern": [{"LIKE_NUM": True}]},
            {
                "label": "PERSON",
                "pattern": [{"IS_TITLE": True, "IS_STOP": False, "IS_SENT_START": False, "OP": "+"}],
            },
        ]
    )
    return nlp


def load_spacy(name: str) -> Any:
    """The spaCy pipeline `name`; `rule_based` gives `rule_based_nlp()`. A missing model is an LmlabError that
    says how to install it (no silent fallback)."""
    if name in ("rule_based", "blank_ruler"):
        return rule_based_nlp()
    import spacy

    try:
        return spacy.load(name)
    except OSError:
        raise LmlabError(
            f"spaCy model {name!r} is not installed; install it with `python -m spacy download {name}` "
            "(or pass ssm_spacy_model=rule_based for the offline rule-based pipeline)"
        ) from None


class _TextWeighting:
    """Shared plumbing: decode every real token id separately (no clean-up) and map per-token weights back."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def token_weights(self, token_texts: list[str]) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(input_ids.shape, dtype=torch.float32)
        for b in range(input_ids.shape[0]):
            positions = attention_mask[b].nonzero().flatten().tolist()
            ids = input_ids[b, positions].tolist()
            texts = [self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
            out[b, positions] = torch.tensor(self.token_weights(texts), dtype=torch.float32)
        return out.to(input_ids.device)


class SSMWeights(_TextWeighting):
    """Salient-span weights: 1 on tokens inside named entities and dates (spaCy NER), 0 elsewhere."""

    def __init__(self, nlp: Callable[[str], Any], tokenizer: Any, ignore: Sequence[str] = SSM_IGNORED):
        super().__init__(tokenizer)
        self.nlp, self.ignore = nlp, ignore

    def token_weights(self, token_texts: list[str]) -> list[float]:
        return [float(v) for v in ssm_token_weights(token_texts, self.nlp, self.ignore)]


# ----------------------------------------------------------------------------------------------------- TF-IDF


class TfidfModel:
    """scikit-learn `TfidfVectorizer()` defaults, natively: lower-case, words `(?u)\\b\\w\\w+\\b`, raw counts,
    smooth idf = ln((1+n)/(1+df)) + 1, L2-normalised document vectors."""

    def __init__(self, corpus: Sequence[str]):
        corpus = list(dict.fromkeys(corpus))  # unique documents, first-seen order
        if not corpus:
            raise LmlabError("TF-IDF needs at least one document to fit on")
        df: collections.Counter[str] = collections.Counter()
        for doc in corpus:
            df.update(set(WORD_PATTERN.findall(doc.lower())))
        n = len(corpus)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        values: list[float] = []
        for doc in corpus:
            values.extend(v for v in self.doc_scores(doc).values() if v > 0)
        self._nonzero = np.asarray(values, dtype=np.float64)

    def doc_scores(self, text: str) -> dict[str, float]:
        """The L2-normalised TF-IDF vector of `text` as {word: value} (words unseen in the corpus are dropped)."""
        counts = collections.Counter(w for w in WORD_PATTERN.findall(text.lower()) if w in self.idf)
        raw = {w: c * self.idf[w] for w, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in raw.values()))
        return {w: v / norm for w, v in raw.items()} if norm > 0 else {}

    def threshold(self, q: float | None) -> float:
        """The linear-interpolation quantile `q` of every non-zero entry of the fitted corpus matrix (0 if q ≤ 0)."""
        if q is None or q <= 0 or self._nonzero.size == 0:
            return 0.0
        return float(np.quantile(self._nonzero, min(q, 1.0)))

    def token_weights(self, token_texts: Sequence[str], min_threshold: float | None = 0.0) -> list[float]:
        """Max over a token's characters of the TF-IDF value of the word covering it; values ≤ the threshold
        (quantile `min_threshold` of the corpus' non-zero entries) become 0."""
        text = "".join(token_texts)
        scores = self.doc_scores(text)
        chars = np.zeros(len(text) + 1, dtype=np.float64)
        for m in WORD_PATTERN.finditer(text):
            chars[m.start() : m.end()] = scores.get(m.group(0).lower(), 0.0)
        weights = _per_token_max(chars, token_texts)
        thr = self.threshold(min_threshold)
        return [w if w > thr else 0.0 for w in weights]


class TfidfWeights(_TextWeighting):
    """TF-IDF weights of each token in its own document, thresholded at quantile `min_threshold`."""

    def __init__(self, tfidf_model: TfidfModel, tokenizer: Any, min_threshold: float | None = 0.0):
        super().__init__(tokenizer)
        self.model, self.min_threshold = tfidf_model, min_threshold

    def token_weights(self, token_texts: list[str]) -> list[float]:
        return self.model.token_weights(token_texts, self.min_threshold)


# ----------------------------------------------------------------------------------------------------- oracle


class OracleWeights:
    """The sanity arm of the reproduction: weight 1 on the tokens of a document's gold answers (every place the
    answer's tokens, as the QA prompt encodes them, `" " + answer`, occur in the document), 0 elsewhere. It knows
    the questions, so it is an upper reference for what a weighting can do, not a method.

    `docs_answers` maps each document text to the gold answers asked about it; documents are recognised by their
    token ids, cut to `max_len` as the adaptation cuts them. An answer that does not occur in its document's
    tokens is an error (the oracle would silently not update on that document)."""

    def __init__(self, tokenizer: Any, docs_answers: dict[str, Sequence[str]], max_len: int = 1024):
        self.spans: dict[tuple[int, ...], list[list[int]]] = {}
        for doc, answers in docs_answers.items():
            ids = tuple(tokenizer(doc, add_special_tokens=False)["input_ids"][:max_len])
            for answer in answers:
                target = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
                if not _occurrences(ids, target):
                    raise LmlabError(
                        f"oracle weights: the answer {answer!r} does not occur in the tokens of its document "
                        f"{doc[:60]!r}...; the oracle needs answers stated verbatim in their documents"
                    )
                self.spans.setdefault(ids, []).append(target)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(input_ids.shape, dtype=torch.float32)
        for b in range(input_ids.shape[0]):
            n = int(attention_mask[b].sum())
            ids = tuple(input_ids[b, :n].tolist())
            if ids not in self.spans:
                raise LmlabError(
                    "oracle weights: a document that is not in the stream the oracle was built for"
                )
            for target in self.spans[ids]:
                for start in _occurrences(ids, target):
                    out[b, start : start + len(target)] = 1.0
        return out.to(input_ids.device)


def _occurrences(seq: Sequence[int], target: Sequence[int]) -> list[int]:
    """Start positions where `target` occurs in `seq` as a contiguous run."""
    k = len(target)
    return [i for i in range(len(seq) - k + 1) if k and list(seq[i : i + k]) == list(target)]
