"""gpu_proof.py's markdown: the rows for docs/PERFORMANCE.md from OUT/gpu_proof.json, streamed rows
included (a section cut at its deadline still gives the variants it finished)."""

from __future__ import annotations


def _variants(section: dict) -> list[tuple[dict, dict]]:
    """(variant numbers, the run's header) for every measured variant of a streamed section."""
    found = []
    for part in section.get("parts", []):
        header = (part.get("result") or {}) if part.get("status") == "ok" else {}
        measured = [r for r in part.get("rows", []) if r.get("phase") == "measured"]
        if header.get("variants"):
            found += [({**v, "variant": name}, header) for name, v in header["variants"].items()]
        else:
            found += [(r, header) for r in measured]
    return found


def _num(value, spec: str, missing="–") -> str:
    """The benchmarks print full precision; the rows round here, for reading."""
    return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
    device, peak, cfg = report["device"], report["bf16_peak_tflops"], report["config"]
    sections = report["sections"]
    lines = [f"GPU proof on {device}, torch {report['torch']}, budget {report['budget_s']:.0f} s, "
             f"total {report.get('total_s')} s. Section status: "
             + "; ".join(f"{k}: {v.get('status')}" for k, v in sections.items()), "",
             f"| config | device | chain batch (learn) | variant | img/s | TFLOP/s | % of {peak:g} bf16 peak "
             "| first step (compile) | peak memory |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in ("ablation", "ablation_more"):
        for v, _ in _variants(sections.get(key, {})):
            lines.append(
                f"| {cfg} | {device} | {v['chain_batch']} ({v['learning_micro_batch']}) | {v['variant']} "
                f"| {v['images_per_sec']:.1f} | {v['achieved_tflops']:.2f} | {100 * v['achieved_tflops'] / peak:.1f} % "
                f"| {v['first_step_s']:.1f} s | {v['peak_memory_bytes'] / 2**30:.2f} GiB |"
            )
    rows = [r for p in sections.get("chain_variants", {}).get("parts", []) for r in p.get("rows", [])]
    if rows:
        head = (
            "| chain variant | steps per graph | chain steps | compile (first call) | img/s | max abs diff vs eager |"
        )
        lines += ["", head, "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['variant']}{' (one CUDA graph)' if r.get('captured_as_one_cuda_graph') else ''} "
                f"| {r['graph_steps']} | {r['chain_steps']} | {_num(r.get('first_call_s'), '.1f')} s "
                f"| {_num(r.get('images_per_sec'), '.1f', r.get('status'))} "
                f"| {_num(r.get('max_abs_diff_vs_eager'), '.2g')} |"
            )
    r = sections.get("resume", {})
    lines += [
        "",
        f"Resume after SIGKILL: {r.get('status')}; bitwise {r.get('bitwise_equal')}, largest floored relative L2 "
        f"difference {r.get('max_floored_relative_l2')} ({r.get('worst_tensor')}); tolerance {r.get('tolerance')}.",
    ]
    fid = next((p.get("result") for p in sections.get("fid", {}).get("parts", []) if p.get("result")), None)
    if fid:
        lines.append(
            f"FID sampling + Inception at {fid['resolution']}²: {fid['samples']} in {fid['seconds']:.1f} s "
            f"({fid['images_per_sec']:.1f} img/s; {fid['network']}); "
            f"50k extrapolated: {fid['extrapolated_50k_seconds']:.0f} s."
        )
    tests = next(iter(sections.get("gpu_tests", {}).get("parts", [])), {})
    lines.append(f"GPU-marked tests: {tests.get('status')} — {tests.get('summary')}")
    return "\n".join(lines) + "\n"
