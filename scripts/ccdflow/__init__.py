"""ccdflow: the reduction library behind the ccdflow Snakemake workflow.

Pure functions (no Snakemake import); the rule scripts in ``scripts/`` are thin
adapters around them.
"""

__all__ = ["__version__"]

#: Pipeline version. Rules pass it as a parameter, so bump it whenever a change in
#: this library alters results: Snakemake then reruns exactly the affected jobs.
__version__ = "0.6.0"
