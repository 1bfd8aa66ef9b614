"""Task templates: which conditions and targets make up one training sequence."""
from speechlm.tasks.template import MODALITIES, Segment, TaskTemplate, find_templates, load_template

__all__ = ["MODALITIES", "Segment", "TaskTemplate", "find_templates", "load_template"]
