"""One implementation of each contract: the untrained-model warning, NIfTI names, the masked input.

Each shared step has one function; these tests pin what its callers rely on.
"""

from __future__ import annotations

from napari_itermask.models import new_card, untrained_warning


def test_untrained_warning_names_the_model_and_is_silent_for_a_trained_one():
    card = new_card("mine", "flair")
    text = untrained_warning(card)
    assert text is not None and "'mine'" in text and "UNTRAINED" in text
    card.trained = True
    assert untrained_warning(card) is None
    # list_models entries are dicts: same wording
    assert untrained_warning({"name": "mine", "trained": False}) == text
    assert untrained_warning({"name": "mine", "trained": True}) is None
