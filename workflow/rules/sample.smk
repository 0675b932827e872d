# Sampling: one sample set per row of the sweep table (source x sampler x striding x NFE), for trained models
# and for the exact-score oracles. A set is made by `shard_jobs` jobs, each a --first/--count slice (separate
# SLURM jobs or GPUs), then gathered: the gathering call verifies every shard by sha256 and writes done.json.


def sample_args(wildcards):
    row = row_of(wildcards.source, wildcards.row)
    if row["kind"] == "model":
        source = f"--run-dir {RESULTS}/runs/{row['source']}"
    else:
        source = f"--oracle {row['data'].replace('multimodal_', '')} --sde {row['sde']}"
    args = [source, f"--sampler {row['sampler']}", f"--num-samples {SAMPLING['num_samples'][row['data']]}",
            f"--seed {STUDY['seed']}", f"--t-min {SAMPLING['t_min']}", f"--batch-size {SAMPLING['batch_size']}",
            f"--shard-size {SAMPLING['shard_size']}", f"--precision {SAMPLING['precision']}"]
    if row["kind"] == "model":
        args.append(f"--net-batch {SAMPLING['net_batch']}")
    if row["sampler"] != "ode":
        args += [f"--nfe {row['nfe']}", f"--striding {row['striding']}"]
    options = SAMPLING.get("options", {}).get(row["sampler"], {})
    for key, value in options.items():
        args.append(f"--{'ode-method' if key == 'method' else key.replace('_', '-')} {value}")
    return " ".join(args)


def sample_inputs(wildcards):
    row = row_of(wildcards.source, wildcards.row)
    return [train_done(row["source"])] if row["kind"] == "model" else []


def part_slice(wildcards):
    n = SAMPLING["num_samples"][row_of(wildcards.source, wildcards.row)["data"]]
    k, parts = int(wildcards.part), SAMPLING["shard_jobs"]
    size = -(-n // parts)
    first = min(k * size, n - 1)
    return f"--first {first} --count {max(1, min(size, n - first))}"


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
        gpu=1,
    log:
        f"{LOGS}/sample/{{source}}/{{row}}/part{{part}}.log",
    benchmark:
        f"{BENCH}/sample/{{source}}/{{row}}/part{{part}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample {params.args} {params.slice} --out {params.out} --done {output.done} --no-progress "
        "> {log} 2>&1"


def gathered_parts(wildcards):
    parts = SAMPLING["shard_jobs"]
    if parts == 1:
        return sample_inputs(wildcards)
    return [f"{RESULTS}/samples/{wildcards.source}/{wildcards.row}/parts/{k}.json" for k in range(parts)]


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
        gpu=1,
    log:
        f"{LOGS}/sample/{{source}}/{{row}}/all.log",
    benchmark:
        f"{BENCH}/sample/{{source}}/{{row}}/all.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample {params.args} --out {params.out} --done {output.done} --no-progress > {log} 2>&1"


def samples_done(row):
    return f"{RESULTS}/samples/{row['source']}/{row['row']}/done.json"
