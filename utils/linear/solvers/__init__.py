"""Linear probe solvers, one module each; importing this package registers them in `SOLVERS`.

    lbfgs    full-batch multinomial logistic regression in torch, L2 chosen on a validation split (default)
    sklearn  the same protocol with scikit-learn's LogisticRegression, as a reference
    sgd      the study's protocol: SGD + step schedule from a trainer config
"""
from utils.linear.solvers.base import (
                                       SOLVERS,
                                       Array,
                                       LinearClassifier,
                                       LinearProbeConfig,
                                       SolverSettings,
                                       as_tensor,
                                       check_labels,
                                       score,
                                       search_l2,
                                       standardizer,
                                       stratified_split,
)

# Importing the solvers registers them.
from utils.linear.solvers import lbfgs, scikit, sgd  # noqa: E402,F401  isort: skip
from utils.linear.solvers.lbfgs import fit_lbfgs  # noqa: E402
from utils.linear.solvers.scikit import fit_sklearn  # noqa: E402
from utils.linear.solvers.sgd import fit_sgd, fit_sgd_epochs  # noqa: E402

__all__ = ["SOLVERS", "Array", "LinearClassifier", "LinearProbeConfig", "SolverSettings", "as_tensor",
           "check_labels", "fit_lbfgs", "fit_sgd", "fit_sgd_epochs", "fit_sklearn", "score", "search_l2",
           "standardizer", "stratified_split"]
