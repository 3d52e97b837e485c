//! The routed experts on the CPU (llama.cpp `build_moe_ffn` with softmax gating and
//! renormalised top-k weights): each chosen expert runs once per call, on the gathered rows
//! that chose it.

use crate::error::Result;
use crate::ops::{self, Exec, MatJob};
use crate::weights::QTensor;

use super::{Cpu, Experts};

/// Route `n` rows of `x` and sum their experts' outputs. Each chosen expert runs once per
/// call, on the gathered rows that chose it.
pub(super) fn forward(m: &Experts<Cpu>, x: &[f32], exec: Exec) -> Result<Vec<f32>> {
    let (e, n_expert) = (m.gate_inp.row_len(), m.gate_inp.n_rows());
    let n = x.len() / e;
    let mut logits = vec![0f32; n * n_expert];
    ops::matmul(&m.gate_inp, x, n, &mut logits, exec)?; // ffn_moe_logits
    let route = crate::prof::stage("moe routing");
    // Per token its k experts (largest first) and their renormalised weights.
    let k = m.n_expert_used;
    let mut sel = vec![(0usize, 0f32); n * k];
    crate::matmul::par_rows(&mut sel, k, 16 * n_expert, exec, &|t, row| {
        let mut p = logits[t * n_expert..(t + 1) * n_expert].to_vec();
        ops::softmax(&mut p); // ffn_moe_probs
        let top = top_k(&p, k); // ffn_moe_topk
                                // ggml clamps the sum before dividing (`ggml_clamp(…, 6.103515625e-5, INF)`).
        let sum: f32 = top.iter().map(|&i| p[i]).sum::<f32>().max(6.103_515_6e-5);
        for (s, &i) in row.iter_mut().zip(&top) {
            *s = (i, p[i] / sum); // ffn_moe_weights_norm
        }
        Ok(())
    })?;
    crate::routing::record(&m.gate_exps.name, n_expert, sel.iter().map(|&(i, _)| i));
    let pairs = sel
        .chunks_exact(k.max(1))
        .enumerate()
        .flat_map(|(t, row)| row.iter().map(move |&(i, w)| (t, i, w)));
    drop(route);
    experts_sum([&m.gate_exps, &m.up_exps, &m.down_exps], x, pairs, exec) // ffn_moe_out
}

/// `y[t] = Σ w · down_e(silu(gate_e·x[t]) ⊙ up_e·x[t])` over the given (token t, expert e,
/// weight w) pairs, for rows of `x` as wide as the experts' input: the SwiGLU experts of
/// stacked `[gate, up, down]` tensors, each chosen expert run once on the rows that chose it.
/// (The CPU backend's MoE after routing, and a GPU backend's RAM-resident experts.)
pub fn experts_sum(
    w: [&QTensor; 3],
    x: &[f32],
    pairs: impl IntoIterator<Item = (usize, usize, f32)>,
    exec: Exec,
) -> Result<Vec<f32>> {
    // A GPU backend calls this from a driver thread, which is part 0 of the pool's jobs.
    crate::pool::flush_denormals();
    let (e, n_expert) = (w[0].row_len(), w[0].dims[2] as usize);
    let n = x.len() / e;
    let mut chosen: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_expert];
    for (t, i, wt) in pairs {
        chosen[i].push((t, wt));
    }
    let used: Vec<(usize, &Vec<(usize, f32)>)> = chosen
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .collect();
    let out = experts(w, x, &used, exec)?;
    let _sum = crate::prof::stage("moe weighted sum");
    // Each token's (expert slot, row of that expert's output, weight), in expert order.
    let mut per_token: Vec<Vec<(usize, usize, f32)>> = vec![Vec::new(); n];
    for (slot, (_, toks)) in used.iter().enumerate() {
        for (i, &(t, wt)) in toks.iter().enumerate() {
            per_token[t].push((slot, i, wt));
        }
    }
    let mut y = vec![0f32; n * e];
    crate::matmul::par_rows(&mut y, e, 8 * e, exec, &|t, dst| {
        for &(slot, i, wt) in &per_token[t] {
            dst.iter_mut()
                .zip(&out[slot][i * e..(i + 1) * e])
                .for_each(|(a, &b)| *a += wt * b);
        }
        Ok(())
    })?;
    Ok(y)
}

/// Each used expert (its slice of the 3-D tensors) on the rows of `x` routed to it: all
/// gate and up projections as one pool job, then all down projections as another.
fn experts(
    [gate_exps, up_exps, down_exps]: [&QTensor; 3],
    x: &[f32],
    used: &[(usize, &Vec<(usize, f32)>)],
    exec: Exec,
) -> Result<Vec<Vec<f32>>> {
    let (e, ff) = (gate_exps.row_len(), gate_exps.dims[1] as usize);
    let gather = crate::prof::stage("moe gather");
    let counts: Vec<usize> = used.iter().map(|(_, t)| t.len()).collect();
    let total: usize = counts.iter().sum();
    // Each token's row quantized once (a prefill token goes to eight experts), then each
    // expert's rows gathered already quantized: an eighth of the bytes of gathering f32
    // rows and quantizing each copy. Where gate and up differ in type, or the type has
    // no dot kernel, the f32 rows are gathered and each job quantizes its own.
    let ty = gate_exps.ty;
    let whole = match up_exps.ty == ty {
        true => ops::quantize(ty, x, e, exec)?,
        false => None,
    };
    let mut picked: Vec<Option<quant::QActs>> = vec![None; used.len()];
    let mut x_all = Vec::new();
    if let Some(whole) = &whole {
        crate::matmul::par_rows(
            &mut picked,
            1,
            4 * e * total / used.len().max(1),
            exec,
            &|i, slot| {
                let rows: Vec<usize> = used[i].1.iter().map(|&(t, _)| t).collect();
                slot[0] = Some(whole.gather(&rows)?);
                Ok(())
            },
        )?;
    } else {
        // Every expert's rows of `x` in one buffer.
        let src: Vec<usize> = used
            .iter()
            .flat_map(|(_, t)| t.iter().map(|&(t, _)| t))
            .collect();
        x_all = vec![0f32; total * e];
        crate::matmul::par_rows(&mut x_all, e, e, exec, &|r, dst| {
            dst.copy_from_slice(&x[src[r] * e..(src[r] + 1) * e]);
            Ok(())
        })?;
    }
    let xs = match whole {
        Some(_) => vec![&x_all[..0]; used.len()],
        None => split_rows_ref(&x_all, &counts, e),
    };
    // Gate and up outputs of every expert in one buffer each, so that SwiGLU runs once
    // over all of them on the pool.
    let (mut gate_all, mut up_all) = (vec![0f32; total * ff], vec![0f32; total * ff]);
    drop(gather);
    let mut jobs = Vec::with_capacity(2 * used.len());
    let gates = split_rows(&mut gate_all, &counts, ff);
    let ups = split_rows(&mut up_all, &counts, ff);
    for ((((&(ex, toks), &xs), g), u), acts) in
        used.iter().zip(&xs).zip(gates).zip(ups).zip(&picked)
    {
        let rows = ex * ff..(ex + 1) * ff;
        let mut gate = job(gate_exps, rows.clone(), xs, toks.len(), g);
        let mut up = job(up_exps, rows, xs, toks.len(), u);
        (gate.acts, up.acts) = (acts.as_ref(), acts.as_ref());
        jobs.push(gate);
        jobs.push(up);
    }
    ops::matmul_batch(&mut jobs, exec)?;
    drop(jobs);
    ops::swiglu_par(&mut gate_all, &up_all, exec)?;
    let gates = split_rows_ref(&gate_all, &counts, ff);
    let mut outs: Vec<Vec<f32>> = used.iter().map(|(_, t)| vec![0f32; t.len() * e]).collect();
    let mut jobs: Vec<MatJob<'_>> = used
        .iter()
        .zip(&gates)
        .zip(&mut outs)
        .map(|((&(ex, toks), &g), o)| job(down_exps, ex * e..(ex + 1) * e, g, toks.len(), o))
        .collect();
    ops::matmul_batch(&mut jobs, exec)?;
    drop(jobs);
    Ok(outs)
}

/// `buf` cut into consecutive slices of `counts[i] · width` values.
fn split_rows<'a>(mut buf: &'a mut [f32], counts: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(counts.len());
    for &c in counts {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(c * width);
        parts.push(head);
        buf = tail;
    }
    parts
}

/// [`split_rows`] for reading.
fn split_rows_ref<'a>(mut buf: &'a [f32], counts: &[usize], width: usize) -> Vec<&'a [f32]> {
    let mut parts = Vec::with_capacity(counts.len());
    for &c in counts {
        let (head, tail) = buf.split_at(c * width);
        parts.push(head);
        buf = tail;
    }
    parts
}

/// A [`MatJob`] from its parts.
fn job<'a>(
    w: &'a QTensor,
    rows: std::ops::Range<usize>,
    x: &'a [f32],
    n_tokens: usize,
    out: &'a mut [f32],
) -> MatJob<'a> {
    MatJob {
        w,
        rows,
        x,
        acts: None,
        n_tokens,
        out,
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k(p: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_picks_largest() {
        assert_eq!(top_k(&[0.1, 0.5, 0.2, 0.5], 2), vec![1, 3]);
    }
}
