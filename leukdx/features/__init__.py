"""Deep features + classic classifiers (Loey et al. 2020, model 1) and feature-space analysis
(LeukNet §4.3).

- :mod:`leukdx.features.extract`: activations of a named layer of a backbone or a trained run,
  cached on disk.
- :mod:`leukdx.features.classifiers`: the registry of classic classifiers (``tree``, ``lda``,
  ``svm_linear``, ``svm_rbf``, ``svm_cubic``, ``knn1``, ``logreg``).
- :mod:`leukdx.features.analysis`: PCA + linear SVM under LODO and k-fold (Table 10), t-SNE maps
  (Figures 10-12), the source-confound report.
- :mod:`leukdx.features.evaluate`: ``run_feature_evaluation`` (``leukdx features``) and the
  ``features`` fold trainer of the evaluation runner.

Importing this package registers the ``features`` fold trainer; TensorFlow is only imported
when a network has to run.
"""

from leukdx.features.analysis import (
    analyse_feature_space,
    feature_space_markdown,
    plot_feature_space,
    source_confound_report,
    tsne_embedding,
)
from leukdx.features.classifiers import (
    build_classifier,
    list_classifiers,
    positive_probability,
    register_classifier,
)
from leukdx.features.evaluate import FeatureTrainer, run_feature_evaluation, table1_markdown
from leukdx.features.extract import FeatureSet, extract_features, feature_cache_key

__all__ = [
    "FeatureSet",
    "FeatureTrainer",
    "analyse_feature_space",
    "build_classifier",
    "extract_features",
    "feature_cache_key",
    "feature_space_markdown",
    "list_classifiers",
    "plot_feature_space",
    "positive_probability",
    "register_classifier",
    "run_feature_evaluation",
    "source_confound_report",
    "table1_markdown",
    "tsne_embedding",
]
