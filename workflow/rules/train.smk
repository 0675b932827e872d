# Training: one run directory per study model. The output is done.json, written when the run has reached its
# steps; checkpoint.pt is not an output, so a killed job's checkpoint survives and the rerun resumes from it.


def train_flags(wildcards, input):
    model = STUDY["models"][wildcards.model]
    sets = {**(model.get("overrides") or {}), "data.path": input.data, "seed": STUDY["seed"]}
    return " ".join(f"--set {key}={value}" for key, value in sets.items())


def train_launcher(wildcards, resources, threads):
    """torchrun for several GPUs on one node (one worker per GPU, threads shared), else plain python."""
    gpus = int(resources.gpu)
    if gpus > 1:
        return (f"OMP_NUM_THREADS={max(1, threads // gpus)} torchrun --standalone --nnodes=1 "
                f"--nproc_per_node={gpus} -m cldsgm")
    return "cldsgm"


rule train:
    input:
        data=lambda wc: data_file(STUDY["models"][wc.model]["data"], "train"),
        config=lambda wc: STUDY["models"][wc.model]["config"],
        parent=parent_run(),
    output:
        done=f"{RESULTS}/runs/{{model}}/done.json",
    params:
        flags=train_flags,
        tracking=parent_flag,
        run_dir=f"{RESULTS}/runs/{{model}}",
        launcher=train_launcher,
    threads: 2
    resources:
        gpu=lambda wc: STUDY["models"][wc.model]["gpus"],
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "{params.launcher} train --config {input.config} --run-dir {params.run_dir} {params.flags} "
        "{params.tracking} --no-progress --done {output.done} > {log} 2>&1"


def train_done(model):
    return f"{RESULTS}/runs/{model}/done.json"
