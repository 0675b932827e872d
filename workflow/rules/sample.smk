# Sampling: one sample set per row of the sweep table (source x sampler x striding x NFE), for trained models
# and for the exact-score oracles. A set is made by `shard_jobs` jobs, each a --first/--count slice (separate
# SLURM jobs or GPUs), then gathered: the gathering call verifies every shard by sha256 and writes done.json.


rule sample_part:
    input:
        sample_inputs,
    output:
        done=f"{RESULTS}/samples/{{source}}/{{row}}/parts/{{part}}.json",
    params:
        args=sample_args,
        slice=part_slice,
        out=f"{RESULTS}/samples/{{source}}/{{row}}",
    threads: 1
    resources:
        gpu=SAMPLING["gpus"],
    log:
        f"{LOGS}/sample/{{source}}/{{row}}/part{{part}}.log",
    benchmark:
        f"{BENCH}/sample/{{source}}/{{row}}/part{{part}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample {params.args} {params.slice} --out {params.out:q} --done {output.done:q} --no-progress "
        "> {log:q} 2>&1"


rule sample:
    input:
        gathered_parts,
    output:
        done=f"{RESULTS}/samples/{{source}}/{{row}}/done.json",
    params:
        args=sample_args,
        out=f"{RESULTS}/samples/{{source}}/{{row}}",
    threads: 1
    resources:
        gpu=SAMPLING["gpus"],
    log:
        f"{LOGS}/sample/{{source}}/{{row}}/all.log",
    benchmark:
        f"{BENCH}/sample/{{source}}/{{row}}/all.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample {params.args} --out {params.out:q} --done {output.done:q} --no-progress > {log:q} 2>&1"
