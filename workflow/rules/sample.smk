# Sampling: one job per source (trained model or exact-score oracle) makes all its sample sets (sampler x striding
# x NFE rows, learning-curve rows) in one process: one torch import and one network load for dozens of sets. Each
# set is still its own directory, the same bytes as a one-set `cldsgm sample`, resumable per set and shard. With
# sampling.shard_jobs = K, K jobs each make one slice of every set (separate SLURM jobs or GPUs); the gathering call
# verifies every shard by sha256 and writes the markers.


rule sample_part:
    input:
        sample_inputs,
    output:
        done=f"{RESULTS}/samples/{{source}}/parts/{{part}}.json",
    params:
        args=source_args,
        rows=row_flags,
        parts=SAMPLING["shard_jobs"],
    threads: 1
    resources:
        gpu=SAMPLING["gpus"],
    log:
        f"{LOGS}/sample/{{source}}/part{{part}}.log",
    benchmark:
        f"{BENCH}/sample/{{source}}/part{{part}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample-rows {params.args} {params.rows} --part {wildcards.part:q} --parts {params.parts:q} "
        "--done {output.done:q} > {log:q} 2>&1"


rule sample:
    input:
        gathered_parts,
    output:
        done=f"{RESULTS}/samples/{{source}}/rows.json",
    params:
        args=source_args,
        rows=row_flags,
    # with shard jobs this only checks their shards' sha256 and writes the markers: no GPU, no queue
    localrule: SHARDED
    threads: 1
    resources:
        gpu=0 if SHARDED else SAMPLING["gpus"],
    log:
        f"{LOGS}/sample/{{source}}.log",
    benchmark:
        f"{BENCH}/sample/{{source}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample-rows {params.args} {params.rows} --done {output.done:q} > {log:q} 2>&1"
