"""Held-out distillation metrics: student MLM perplexity, causal KL and interchange-intervention accuracy (IIA:
argmax agreement of the student's and the teacher's intervened predictions over non-pad positions).

Two probes of the interventions themselves: `ignore_iia` is the IIA of a predictor that ignores the intervention
(the teacher's own plain prediction against its intervened one), so 1 - ignore_iia is the share of positions whose
teacher prediction the intervention changes (`changed_fraction`); `changed_iia` is the student's IIA on those
positions only, where copying the plain output scores 0. `plain_kl` is the KL of the plain (un-intervened) outputs,
so causal_kl / plain_kl says how much harder the interventions are for the student than ordinary inputs."""

from __future__ import annotations

import torch
from lmlab.metrics import perplexity

from diito import losses
from diito.sites import interchange_forward


@torch.no_grad()
def distillation_metrics(
    teacher, student, loader, entries, temperature: float = 2.0, max_batches: int | None = None
) -> dict:
    from diito.mapping import resolve_sites
    from diito.sites import model_dims

    teacher.eval()
    student.eval()
    dev = next(student.parameters()).device
    nll = n_masked = 0.0
    kl_sum = plain_kl_sum = kl_n = 0.0
    agree = total = 0
    plain_agree = ignore_agree = changed_agree = n_changed = 0
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
        e, ti, si = (int(x) for x in batch["entry"])
        t_sites = {
            k: (None if v is None else v.to(dev))
            for k, v in resolve_sites(entries[e].teacher[ti], *model_dims(teacher)).items()
        }
        s_sites = {
            k: (None if v is None else v.to(dev))
            for k, v in resolve_sites(entries[e].student[si], *model_dims(student)).items()
        }
        args = (batch["base_ids"], batch["base_mask"], batch["src_ids"], batch["src_mask"])
        t = interchange_forward(teacher, *args, {**t_sites}, batch["P"], batch["Ps"])
        s = interchange_forward(student, *args, {**s_sites}, batch["P"], batch["Ps"])
        labels = batch["labels"]
        sel = labels >= 0
        nll += float(torch.nn.functional.cross_entropy(s.logits[sel].float(), labels[sel], reduction="sum"))
        n_masked += int(sel.sum())
        mask = batch["base_mask"].bool()
        n = int(mask.sum())
        kl_sum += float(losses.kl_loss(s.int_logits, t.int_logits, mask, temperature)) * n
        plain_kl_sum += float(losses.kl_loss(s.logits, t.logits, mask, temperature)) * n
        kl_n += n
        t_int, s_int = t.int_logits.argmax(-1), s.int_logits.argmax(-1)
        t_plain = t.logits.argmax(-1)
        hit = s_int == t_int
        agree += int(hit[mask].sum())
        plain_agree += int((s.logits.argmax(-1) == t_plain)[mask].sum())
        ignore_agree += int((t_plain == t_int)[mask].sum())
        changed = mask & (t_plain != t_int)
        changed_agree += int(hit[changed].sum())
        n_changed += int(changed.sum())
        total += n
    return {
        "mlm_perplexity": perplexity(nll, n_masked),
        "causal_kl": kl_sum / max(kl_n, 1),
        "plain_kl": plain_kl_sum / max(kl_n, 1),
        "iia": agree / max(total, 1),
        "plain_agreement": plain_agree / max(total, 1),
        "ignore_iia": ignore_agree / max(total, 1),
        "changed_iia": changed_agree / max(n_changed, 1),
        "changed_fraction": n_changed / max(total, 1),
        "eval_tokens": total,
    }
