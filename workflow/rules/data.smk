# Dataset preparation: one prepared split per (dataset, split), written atomically with its manifest.


rule prepare:
    output:
        npz=f"{RESULTS}/data/{{data}}_{{split}}.npz",
        manifest=f"{RESULTS}/data/{{data}}_{{split}}.json",
    params:
        flags=prepare_flags,
        out=lambda wc, output: os.path.dirname(output.npz),
        seed=STUDY["seed"],
    priority: 3  # seconds of work that gates every training
    log:
        f"{LOGS}/prepare/{{data}}_{{split}}.log",
    benchmark:
        f"{BENCH}/prepare/{{data}}_{{split}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm prepare --dataset {wildcards.data} --split {wildcards.split} --out {params.out:q} "
        "--seed {params.seed:q} {params.flags} > {log:q} 2>&1"
