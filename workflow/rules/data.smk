# Dataset preparation: one prepared split per (dataset, split), written atomically with its manifest.


def prepare_flags(wildcards):
    spec = STUDY["data"][wildcards.data]
    flags = []
    if "source" in spec:
        flags.append(f"--source {spec['source']}")
    if wildcards.data in POINTS:
        flags.append(f"--n {spec.get('n_train' if wildcards.split == 'train' else 'n_test', 10000)}")
    if "test_fraction" in spec:
        flags.append(f"--test-fraction {spec['test_fraction']}")
    if "resolution" in spec:
        flags.append(f"--resolution {spec['resolution']}")
    return " ".join(flags)


rule prepare:
    output:
        npz=f"{RESULTS}/data/{{data}}_{{split}}.npz",
        manifest=f"{RESULTS}/data/{{data}}_{{split}}.json",
    params:
        flags=prepare_flags,
        out=f"{RESULTS}/data",
        seed=STUDY["seed"],
    log:
        f"{LOGS}/prepare/{{data}}_{{split}}.log",
    benchmark:
        f"{BENCH}/prepare/{{data}}_{{split}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm prepare --dataset {wildcards.data} --split {wildcards.split} --out {params.out} "
        "--seed {params.seed} {params.flags} > {log} 2>&1"
