"""The YAML recipe: schema (schema.py, reward specs in rewards.py), reading and --set (loading.py), multi-stage
pipelines expanded into one recipe per stage (pipeline.py), and configs of other tools converted (importers/).

A recipe is read once, validated whole, and every problem is reported with the file, the line,
the key path and (for a misspelt key) the closest valid key.

May import: ftcli.errors only. Everything else imports the recipe, never the other way.
"""

from ftcli.recipe.loading import load, parse_override, to_yaml
from ftcli.recipe.pipeline import Pipeline, PlannedStage, is_pipeline, load_any, load_pipeline
from ftcli.recipe.schema import (DPO_LOSS_TYPES, GRPO_LOSS_TYPES, KERNEL_OPS, DatasetSection, DpoSection,
                                 ExportSection, GrpoSection, LoraSection, ModelSection, Recipe, Section,
                                 TemplateSection, TrainSection, section_class)

__all__ = ["load", "parse_override", "to_yaml", "Pipeline", "PlannedStage", "is_pipeline", "load_any", "load_pipeline",
           "DPO_LOSS_TYPES", "GRPO_LOSS_TYPES", "KERNEL_OPS", "DatasetSection",
           "DpoSection", "ExportSection", "GrpoSection", "LoraSection", "ModelSection", "Recipe", "Section",
           "TemplateSection", "TrainSection", "section_class"]
