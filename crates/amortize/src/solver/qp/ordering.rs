//! A cheap fill-reducing ordering with a certificate, tried before AMD.
//!
//! Any symmetric ordering of K gives a factor L that holds at least the entries of K's
//! triangle (L's pattern contains the permuted triangle's). So when an ordering's factor has
//! at most `slack` times the entries of K's triangle, no ordering, AMD's included, can store
//! fewer than 1/`slack` of them: the ordering is certified near-optimal and AMD need not run.
//!
//! The candidate eliminates rows by ascending initial degree (a counting sort, O(n + nnz)).
//! On KKT matrices whose constraints are bounds on single variables plus a few rows that
//! touch many variables (OSQP's portfolio class: k factor rows and a budget row over all n
//! assets) it eliminates the leaves first and the hubs last, which leaves almost no fill,
//! while AMD's degree updates on those hubs cost O(n²): 56% of such a QP's whole set-up at
//! n = 100 (a `perf` profile; `bench solvers --part ordering` measures the difference). The
//! factor's size under the candidate is counted by the elimination-tree walk (Liu's column
//! counts), stopped as soon as it exceeds the budget, so a rejection costs O(nnz(K) + budget)
//! and AMD then runs as before. It is attempted only on graphs with a hub (a row of degree at
//! least 2√dim), where AMD is slow.

/// The attempt is made only when some row has at least this many times √dim neighbours (a
/// hub: the factor rows of a portfolio QP have n + 1 of the 2n + k + 1 rows): AMD's degree
/// updates are slow on hubs, and quick on graphs without them (AMD itself treats degrees above
/// 10√dim as dense).
const HUB_DEGREE: f64 = 2.0;

/// Entries of the factor's triangle, diagonal included, and the multiply-adds of its LDLᵀ
/// factorisation (AMD's count: Σ r + (r² + r)/2 over columns with r entries below the
/// diagonal), for the layout choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct FactorCount {
    pub entries: f64,
    pub flops: f64,
}

/// The ascending-degree ordering (`fwd[k]` is eliminated k-th, `inv` its inverse) of the
/// `dim`×`dim` symmetric pattern given by its upper triangle in CSC form (`col_ptr`,
/// `row_idx`, every diagonal entry present), when its factor has at most `slack` times the
/// entries of that triangle; `None` otherwise.
pub(super) fn certified_degree_ordering(
    dim: usize,
    col_ptr: &[usize],
    row_idx: &[usize],
    slack: f64,
) -> Option<(Vec<usize>, Vec<usize>, FactorCount)> {
    // Degrees in the symmetric graph (off-diagonal entries, both ends).
    let mut degree = vec![0usize; dim];
    for j in 0..dim {
        for &i in &row_idx[col_ptr[j]..col_ptr[j + 1]] {
            if i != j {
                degree[i] += 1;
                degree[j] += 1;
            }
        }
    }
    // Only a graph with hubs can pay for the attempt: AMD is cheap without them, and the
    // passes below cost about 6% of a set-up when the certificate then fails (callgrind, on
    // lasso, SVM, Huber and control QPs).
    let max_degree = degree.iter().copied().max().unwrap_or(0);
    if (max_degree as f64) < HUB_DEGREE * (dim as f64).sqrt() {
        return None;
    }
    // Counting sort by degree; ties keep the original order.
    let mut start = vec![0usize; max_degree + 2];
    for &d in &degree {
        start[d + 1] += 1;
    }
    for d in 0..=max_degree {
        start[d + 1] += start[d];
    }
    let mut fwd = vec![0usize; dim];
    for (i, &d) in degree.iter().enumerate() {
        fwd[start[d]] = i;
        start[d] += 1;
    }
    let mut inv = vec![0usize; dim];
    for (k, &i) in fwd.iter().enumerate() {
        inv[i] = k;
    }
    // The permuted strictly-upper pattern by columns: column b lists the rows a < b.
    let mut ptr = vec![0usize; dim + 1];
    for j in 0..dim {
        for &i in &row_idx[col_ptr[j]..col_ptr[j + 1]] {
            if i != j {
                ptr[inv[i].max(inv[j]) + 1] += 1;
            }
        }
    }
    for c in 0..dim {
        ptr[c + 1] += ptr[c];
    }
    let mut fill = ptr.clone();
    let mut rows = vec![0usize; ptr[dim]];
    for j in 0..dim {
        for &i in &row_idx[col_ptr[j]..col_ptr[j + 1]] {
            if i != j {
                let (a, b) = (inv[i].min(inv[j]), inv[i].max(inv[j]));
                rows[fill[b]] = a;
                fill[b] += 1;
            }
        }
    }
    // Column counts of L by the elimination-tree walk: row k of L holds the nodes reached
    // from the entries (a, k), a < k, by following parents up to k.
    let budget = (slack * row_idx.len() as f64).floor() as usize;
    const NONE: usize = usize::MAX;
    let mut parent = vec![NONE; dim];
    let mut visited = vec![NONE; dim];
    let mut below = vec![0usize; dim];
    let mut entries = dim;
    for k in 0..dim {
        visited[k] = k;
        for &a in &rows[ptr[k]..ptr[k + 1]] {
            let mut i = a;
            while visited[i] != k {
                if parent[i] == NONE {
                    parent[i] = k;
                }
                below[i] += 1;
                entries += 1;
                visited[i] = k;
                i = parent[i];
            }
        }
        if entries > budget {
            return None;
        }
    }
    let flops = below
        .iter()
        .map(|&r| {
            let r = r as f64;
            r + (r * r + r) / 2.0
        })
        .sum();
    Some((
        fwd,
        inv,
        FactorCount {
            entries: entries as f64,
            flops,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upper triangle (CSC) of a symmetric pattern given by its off-diagonal edges.
    fn upper(dim: usize, edges: &[(usize, usize)]) -> (Vec<usize>, Vec<usize>) {
        let mut columns = vec![vec![]; dim];
        for j in 0..dim {
            columns[j].push(j);
        }
        for &(a, b) in edges {
            columns[a.max(b)].push(a.min(b));
        }
        let (mut col_ptr, mut row_idx) = (vec![0], vec![]);
        for mut c in columns {
            c.sort_unstable();
            row_idx.extend(c);
            col_ptr.push(row_idx.len());
        }
        (col_ptr, row_idx)
    }

    /// Entries of L's triangle under the elimination order `fwd`, by eliminating a dense
    /// boolean graph: the independent count.
    fn brute_force_entries(dim: usize, edges: &[(usize, usize)], fwd: &[usize]) -> usize {
        let mut inv = vec![0; dim];
        for (k, &i) in fwd.iter().enumerate() {
            inv[i] = k;
        }
        let mut g = vec![vec![false; dim]; dim];
        for &(a, b) in edges {
            let (a, b) = (inv[a], inv[b]);
            g[a][b] = true;
            g[b][a] = true;
        }
        let mut entries = dim;
        for k in 0..dim {
            let later: Vec<usize> = (k + 1..dim).filter(|&j| g[k][j]).collect();
            entries += later.len();
            for &a in &later {
                for &b in &later {
                    if a != b {
                        g[a][b] = true;
                    }
                }
            }
        }
        entries
    }

    #[test]
    fn a_star_is_ordered_hub_last_and_certified_without_fill() {
        // Node 0 is a hub joined to all others: eliminated first it fills the whole matrix,
        // eliminated last it leaves none.
        let dim = 8;
        let edges: Vec<_> = (1..dim).map(|i| (0, i)).collect();
        let (col_ptr, row_idx) = upper(dim, &edges);
        let (fwd, inv, count) = certified_degree_ordering(dim, &col_ptr, &row_idx, 1.0).unwrap();
        assert_eq!(fwd[dim - 1], 0);
        assert_eq!(inv[0], dim - 1);
        assert_eq!(count.entries as usize, row_idx.len());
        assert_eq!(
            count.entries as usize,
            brute_force_entries(dim, &edges, &fwd)
        );
        // Seven columns with one entry below the diagonal: 7 · (1 + 1) multiply-adds.
        assert_eq!(count.flops, 14.0);
    }

    #[test]
    fn counts_match_brute_force_elimination_and_fill_is_refused_past_the_slack() {
        // A cycle with chords fills under any ordering, and node 12, joined to all, is the hub
        // that lets the attempt be made: the count is exact, and a slack below it refuses.
        let dim = 13;
        let mut edges: Vec<_> = (0..12).map(|i| (i, (i + 1) % 12)).collect();
        edges.extend([(0, 6), (3, 9), (2, 7)]);
        edges.extend((0..12).map(|i| (i, 12)));
        let (col_ptr, row_idx) = upper(dim, &edges);
        let (fwd, _, count) = certified_degree_ordering(dim, &col_ptr, &row_idx, 10.0).unwrap();
        let exact = brute_force_entries(dim, &edges, &fwd);
        assert_eq!(count.entries as usize, exact);
        assert!(exact > row_idx.len(), "the cycle must fill");
        let tight = (exact - 1) as f64 / row_idx.len() as f64;
        assert!(certified_degree_ordering(dim, &col_ptr, &row_idx, tight).is_none());
        let enough = exact as f64 / row_idx.len() as f64;
        assert!(certified_degree_ordering(dim, &col_ptr, &row_idx, enough).is_some());
    }

    #[test]
    fn graphs_without_a_hub_are_left_to_amd() {
        // A path has no fill under this ordering, but no hub either: AMD is cheap on it.
        let dim = 30;
        let edges: Vec<_> = (0..dim - 1).map(|i| (i, i + 1)).collect();
        let (col_ptr, row_idx) = upper(dim, &edges);
        assert!(certified_degree_ordering(dim, &col_ptr, &row_idx, 100.0).is_none());
    }
}
