"""Embedding-collapse analysis: the paper's instruments as a library.

- Matrix metrics (:mod:`fastme.analysis.metrics`): information abundance, normalised variants,
  singular-value spectra, principal-angle diversity of two embedding sets.
- Model analysis (:mod:`fastme.analysis.collapse`): per-field IA and spectra, embedding-set
  diversity with its SE and random baselines, DCNv2 sub-embedding IA and interaction patterns,
  IA and diversity of sets grouped by expert kind (the heterogeneous model).
- Figures (:mod:`fastme.analysis.plots`).

A library with no commands and no training: the experiments that use it are
:mod:`fastme.experiments`. See docs/analysis.md.
"""

from fastme.analysis.collapse import (
    FieldFactors,
    concat_sets,
    cross_blocks,
    field_information_abundance,
    field_spectra,
    field_tables,
    group_information_abundance,
    grouped_diversity,
    interaction_pattern,
    model_diversity,
    random_diversity,
    random_information_abundance,
    seen_masks,
    set_diversity,
    split_sets,
    sub_embedding_analysis,
    sub_embedding_correlation,
    sub_embedding_information_abundance,
)
from fastme.analysis.metrics import (
    compact_factor,
    embedding_diversity,
    expected_random_ia,
    gram,
    information_abundance,
    normalized_information_abundance,
    principal_angle_cosines,
    random_factor,
    singular_values,
    spectrum,
)

__all__ = [
    "FieldFactors",
    "compact_factor",
    "concat_sets",
    "cross_blocks",
    "embedding_diversity",
    "expected_random_ia",
    "field_information_abundance",
    "field_spectra",
    "field_tables",
    "gram",
    "group_information_abundance",
    "grouped_diversity",
    "information_abundance",
    "interaction_pattern",
    "model_diversity",
    "normalized_information_abundance",
    "principal_angle_cosines",
    "random_diversity",
    "random_factor",
    "random_information_abundance",
    "seen_masks",
    "set_diversity",
    "singular_values",
    "spectrum",
    "split_sets",
    "sub_embedding_analysis",
    "sub_embedding_correlation",
    "sub_embedding_information_abundance",
]
