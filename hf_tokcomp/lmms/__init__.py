"""lmms-eval plugin (``pip install hf_tokcomp[lmms]``): the ``tokcomp`` model for ``python -m lmms_eval``.

lmms-eval loads this module through its ``lmms_eval.models`` entry point when it starts, so it only declares the
model (:data:`MANIFEST`); the class, :class:`hf_tokcomp.lmms.model.TokComp`, is imported when a run asks for it.
hf_tokcomp itself never imports this package. ``hf_tokcomp.lmms.organism_task`` writes a local lmms-eval task over
organism test samples.
"""

from lmms_eval.models.registry_v2 import ModelManifest

__all__ = ["MANIFEST"]

#: ``--model tokcomp`` (any family: chosen by the checkpoint's ``model_type``)
MANIFEST = ModelManifest(model_id="tokcomp", simple_class_path="hf_tokcomp.lmms.model.TokComp")
