# Training: one run directory per study model. The output is done.json, written when the run has reached its
# steps; checkpoint.pt is not an output, so a killed job's checkpoint survives and the rerun resumes from it.


rule train:
    input:
        data=lambda wc: data_file(model_of(wc.model)["data"], "train"),
        config=lambda wc: model_of(wc.model)["config"],
        parent=parent_run(),
    output:
        done=f"{RESULTS}/runs/{{model}}/done.json",
    wildcard_constraints:
        model=one_of([run for run in TRAINED if run not in MULTINODE]),
    params:
        flags=train_flags,
        tracking=parent_flag,
        run_dir=f"{RESULTS}/runs/{{model}}",
        launcher=train_launcher,
    # one thread on the CPU: the default study's networks gain nothing from a second one (measured: digits 170 s
    # either way), and two trainings then run side by side on 2 cores instead of one after the other
    threads: lambda wc: 4 if model_of(wc.model)["gpus"] else 1
    priority: train_priority
    resources:
        gpu=lambda wc: model_of(wc.model)["gpus"],
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "{params.launcher} train --config {input.config:q} --run-dir {params.run_dir:q} {params.flags} "
        "{params.tracking} --done {output.done:q} > {log:q} 2>&1"


# The same training over several nodes (a cluster executor): the batch script runs Snakemake's job step on the
# first node without wrapping it in srun (the `mpi` resource), and the command's own srun starts one torchrun per
# node; --gres asks for `gpus` on every node.
use rule train as train_nodes with:
    wildcard_constraints:
        model=one_of(MULTINODE),
    resources:
        gpu=0,
        gres=train_gres,
        nodes=lambda wc: model_of(wc.model)["nodes"],
        tasks=lambda wc: model_of(wc.model)["nodes"],
        tasks_per_gpu=0,  # else the SLURM plugin turns `tasks` into --ntasks-per-gpu
        mpi="srun",


# A model of the authors' released weights: imported (`cldsgm import-checkpoint`), not trained.
rule import_checkpoint:
    input:
        checkpoint=lambda wc: model_of(wc.model)["checkpoint"]["file"],
        config=lambda wc: model_of(wc.model)["config"],
    output:
        done=f"{RESULTS}/runs/{{model}}/done.json",
    wildcard_constraints:
        model=one_of(IMPORTED),
    params:
        flags=import_flags,
        run_dir=f"{RESULTS}/runs/{{model}}",
    log:
        f"{LOGS}/import/{{model}}.log",
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm import-checkpoint {input.checkpoint:q} --config {input.config:q} --out {params.run_dir:q} {params.flags} "
        "--done {output.done:q} > {log:q} 2>&1"
