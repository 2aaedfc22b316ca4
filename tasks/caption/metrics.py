"""The COCO caption metrics (pycocoevalcap), with per-image CIDEr for the paired tests."""

def coco_caption_scores(hypotheses, references):
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr (x100) of one caption per image against all its references, with
    pycocoevalcap's PTB tokenizer, as in the COCO caption evaluation. SPICE is left out: it downloads models.
    The tokenizer and METEOR run on Java. Returns (corpus scores, {"cider": per-image CIDEr})."""
    import contextlib
    import io
    import shutil

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need one hypothesis per image: {len(hypotheses)} hypotheses, {len(references)} images")
    if shutil.which("java") is None:
        raise RuntimeError("pycocoevalcap's tokenizer and METEOR need Java: install a JRE (java on PATH)")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(hypotheses)})
    scores = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"bleu{n}": float(100 * b) for n, b in enumerate(bleu, 1)})
        scores["meteor"] = float(100 * Meteor().compute_score(gts, res)[0])
        scores["rouge_l"] = float(100 * Rouge().compute_score(gts, res)[0])
        cider, per_image = Cider().compute_score(gts, res)
        scores["cider"] = float(100 * cider)
    # CIDEr is the mean of per-image scores: kept (x100, in input order) for paired bootstrap tests
    by_id = dict(zip(gts.keys(), per_image))
    scores_per_image = {"cider": [round(float(100 * by_id[i]), 4) for i in range(len(hypotheses))]}
    return scores, scores_per_image
