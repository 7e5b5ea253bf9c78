"""The family registry: ``model_type`` -> our compressed class, filled by each family file as it is imported.

Families register themselves (``@register_family("qwen2_vl")`` on the class), so code that looks a family up by
``model_type`` - the Hub loader, the CLI - never imports the model files and the package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["FAMILIES", "register_family", "family_class", "map_auto_classes"]

#: model_type -> compressed model class; filled by ``register_family`` when ``hf_tokcomp.models`` is imported
FAMILIES: dict[str, type] = {}


def register_family(model_type: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` the compressed class for checkpoints of ``model_type``.

    Registering the same class again is a no-op; another class for a registered ``model_type`` is an error.
    """

    def register(cls: type) -> type:
        known = FAMILIES.get(model_type)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"model_type {model_type!r} is already registered to {known.__qualname__}; cannot register "
                f"{cls.__qualname__} too. Use another model_type or remove the first registration."
            )
        FAMILIES[model_type] = cls
        map_auto_classes(cls)
        return cls

    return register


def family_class(model_type: str, what: str = "model") -> type:
    """Our class for ``model_type``; a ValueError naming the supported types if there is none."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"{what} has model_type {model_type!r}; hf_tokcomp supports {sorted(FAMILIES)}. Use a checkpoint of a "
            "supported family (import hf_tokcomp first, so that the families register)."
        )
    return FAMILIES[model_type]


def map_auto_classes(cls: type) -> None:
    """Let transformers' auto classes build models from ``cls.config_class`` (our compression config) as they do
    from the stock config it extends: the auto class that builds the stock class ``cls`` extends builds ``cls``,
    every other one (``AutoModel``, ``AutoModelForSequenceClassification``, ...) its stock class.

    Without this, a stock class made from our model's config (``Qwen3_5ForSequenceClassification(model.config)``,
    whose ``__init__`` calls ``AutoModel.from_config``) fails with "Unrecognized configuration class".
    """
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.auto_factory import _LazyAutoMapping

    ours = getattr(cls, "config_class", None)
    if ours is None:
        return
    for mapping in vars(modeling_auto).values():
        if not isinstance(mapping, _LazyAutoMapping) or ours in mapping._extra_content:
            continue
        stock = next((c for c in ours.__mro__[1:] if c in mapping), None)
        if stock is None:
            continue
        try:
            value = mapping[stock]
        except (AttributeError, KeyError, ImportError):  # a mapped class this transformers does not ship
            continue
        builds_ours = isinstance(value, type) and issubclass(cls, value)
        mapping.register(ours, cls if builds_ours else value, exist_ok=True)
