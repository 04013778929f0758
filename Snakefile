# ccdflow: raw CCD frames -> masters -> calibrated, cleaned, aligned frames -> stacks.
# Run:  snakemake --cores all --config raw_dir=/path/to/night
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/workdir.smk"


configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/masters.smk"
include: "workflow/rules/frames.smk"
include: "workflow/rules/stack.smk"
include: "workflow/rules/report.smk"


# Tables and the report read the small records: on a cluster they run where Snakemake runs.
localrules:
    collect_qc,
    collect_calibration_qc,
    make_report,


rule all:
    default_target: True
    input:
        final_outputs(),
