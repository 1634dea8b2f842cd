//! Compaction planning (docs/design.md §5.4): which SSTables to merge next, whether
//! tombstones may be dropped, and how the live set changes when a compaction finishes.
//!
//! Everything here is a pure function of its arguments (decisions in pure code,
//! docs/design.md §2.2; as mini-lsm's `generate_compaction_task` /
//! `apply_compaction_result`). It never reads files, the clock (callers pass `now_ms`)
//! or a random source, and never merges values: the compaction executor does that with
//! [`crate::conflict::merge`].
//!
//! The default strategy is size-tiered, as Cassandra's STCS: tables of similar size form
//! a tier; a tier with at least `min_threshold` tables is merged into one table of the
//! next tier. With `T` = `bucket_high`, tier `k ≥ 2` only holds tables at least
//! `min_sstable_size_bytes · T^(k-2)` bytes large, so once the planner has nothing to do
//! there are fewer than `min_threshold` tables in each of at most
//! `2 + log_T(total_bytes / min_sstable_size_bytes)` tiers.

use crate::conflict::Hlc;
use std::collections::BTreeSet;

/// What the planner knows about one live SSTable (from its stats block or the manifest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSummary {
    /// SSTable id, unique per shard, allocated from the manifest's `next_sstable_id`.
    pub id: u64,
    /// Size of the SSTable file in bytes.
    pub size_bytes: u64,
    /// Smallest and largest user key in the table (inclusive; plain byte order).
    pub min_key: Vec<u8>,
    pub max_key: Vec<u8>,
    /// Smallest and largest HLC timestamp of any version in the table.
    pub min_timestamp: Hlc,
    pub max_timestamp: Hlc,
    /// Keys whose state is a tombstone only.
    pub tombstones: u64,
    /// Keys in the table.
    pub entries: u64,
    /// Largest per-shard write sequence number contained: orders tables newest first for
    /// reads (a flush uses the memtable's largest seq; a compaction the inputs' largest).
    pub created_seq: u64,
}

impl TableSummary {
    /// Whether `key` lies within this table's key range (it may or may not be present).
    pub fn covers_key(&self, key: &[u8]) -> bool {
        self.min_key.as_slice() <= key && key <= self.max_key.as_slice()
    }
}

/// Size-tiered compaction parameters (Cassandra STCS names).
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionConfig {
    /// Fewest tables a tier needs before it is compacted (≥ 2).
    pub min_threshold: usize,
    /// Most tables merged by one compaction.
    pub max_threshold: usize,
    /// A table joins a tier when its size is in (avg · low, avg · high) of the tier.
    pub bucket_low: f64,
    pub bucket_high: f64,
    /// All tables smaller than this share the first tier whatever their ratio.
    pub min_sstable_size_bytes: u64,
    /// Tombstones younger than this are never dropped (lets repair spread deletes).
    pub gc_grace_seconds: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            min_threshold: 4,
            max_threshold: 32,
            bucket_low: 0.5,
            bucket_high: 1.5,
            min_sstable_size_bytes: 50 * 1024 * 1024,
            gc_grace_seconds: 10 * 24 * 3600,
        }
    }
}

impl CompactionConfig {
    /// Check the relationships the planner relies on; call at startup on user config.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_threshold < 2 {
            return Err(format!(
                "compaction min_threshold must be at least 2, got {}",
                self.min_threshold
            ));
        }
        if self.max_threshold < self.min_threshold {
            return Err(format!(
                "compaction max_threshold ({}) must be at least min_threshold ({})",
                self.max_threshold, self.min_threshold
            ));
        }
        // Strict bounds: a table equal to the tier average must join it, and tiers must
        // grow geometrically (the bound in the module doc).
        if !(self.bucket_low > 0.0 && self.bucket_low < 1.0) {
            return Err(format!(
                "compaction bucket_low must be in (0, 1), got {}",
                self.bucket_low
            ));
        }
        if !(self.bucket_high > 1.0 && self.bucket_high.is_finite()) {
            return Err(format!(
                "compaction bucket_high must be a finite number above 1, got {}",
                self.bucket_high
            ));
        }
        if self.min_sstable_size_bytes == 0 {
            return Err("compaction min_sstable_size_bytes must be at least 1".to_string());
        }
        Ok(())
    }
}

/// One compaction to run: merge `inputs` into new tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionTask {
    /// Ids of the input tables, ascending, no duplicates.
    pub inputs: Vec<u64>,
    /// Some input may hold a tombstone past `gc_grace`. Only a permission: the executor
    /// must still ask [`can_drop_tombstone`] for every tombstone it wants to drop.
    pub drop_tombstones: bool,
}

/// Group tables into size tiers, smallest tier first; within a tier, tables ascend by
/// (size, id). Deterministic and independent of the order of `tables`.
pub fn size_tiers<'a>(
    tables: &'a [TableSummary],
    config: &CompactionConfig,
) -> Vec<Vec<&'a TableSummary>> {
    let mut sorted: Vec<&TableSummary> = tables.iter().collect();
    sorted.sort_by_key(|t| (t.size_bytes, t.id));

    let mut tiers: Vec<Vec<&TableSummary>> = Vec::new();
    let mut tier_total_bytes: u128 = 0;
    for table in sorted {
        // Tables come in ascending size, so only the last tier can fit the next one.
        let fits = tiers.last().is_some_and(|tier| {
            let average = tier_total_bytes as f64 / tier.len() as f64;
            let size = table.size_bytes as f64;
            let similar = size > average * config.bucket_low && size < average * config.bucket_high;
            let both_small = table.size_bytes < config.min_sstable_size_bytes
                && average < config.min_sstable_size_bytes as f64;
            similar || both_small
        });
        match tiers.last_mut() {
            Some(tier) if fits => {
                tier.push(table);
                tier_total_bytes += u128::from(table.size_bytes);
            }
            _ => {
                tiers.push(vec![table]);
                tier_total_bytes = u128::from(table.size_bytes);
            }
        }
    }
    tiers
}

/// Size-tiered plan: the tier with the most tables (at least `min_threshold`, at most the
/// `max_threshold` smallest of it), ties going to the smallest total size, then to the
/// smaller tier. `None` when no tier is due.
///
/// Pass only tables that are not inputs of a running compaction.
pub fn plan_size_tiered(
    tables: &[TableSummary],
    config: &CompactionConfig,
    now_ms: u64,
) -> Option<CompactionTask> {
    assert!(
        config.validate().is_ok(),
        "invalid compaction config: {config:?}"
    );
    assert_unique_ids(tables);

    let tiers = size_tiers(tables, config);
    let mut best: Option<(usize, u128, &[&TableSummary])> = None;
    for tier in &tiers {
        if tier.len() < config.min_threshold {
            continue;
        }
        let candidate = &tier[..tier.len().min(config.max_threshold)];
        let total_bytes: u128 = candidate.iter().map(|t| u128::from(t.size_bytes)).sum();
        // Strict comparisons keep the earlier (smaller) tier on a full tie.
        let better = match best {
            None => true,
            Some((count, total, _)) => {
                candidate.len() > count || (candidate.len() == count && total_bytes < total)
            }
        };
        if better {
            best = Some((candidate.len(), total_bytes, candidate));
        }
    }
    let (_, _, chosen) = best?;
    let chosen: Vec<&TableSummary> = chosen.to_vec();
    let task = make_task(&chosen, config, now_ms);
    assert!(task.inputs.len() >= config.min_threshold);
    assert!(task.inputs.len() <= config.max_threshold);
    Some(task)
}

/// Major compaction: every table into one (admin command, tests). `None` when there is
/// nothing to gain: no tables, or a single table without a droppable tombstone.
pub fn plan_major(
    tables: &[TableSummary],
    config: &CompactionConfig,
    now_ms: u64,
) -> Option<CompactionTask> {
    assert_unique_ids(tables);
    let all: Vec<&TableSummary> = tables.iter().collect();
    let task = make_task(&all, config, now_ms);
    match task.inputs.len() {
        0 => None,
        1 if !task.drop_tombstones => None,
        _ => Some(task),
    }
}

fn make_task(inputs: &[&TableSummary], config: &CompactionConfig, now_ms: u64) -> CompactionTask {
    let mut ids: Vec<u64> = inputs.iter().map(|t| t.id).collect();
    ids.sort_unstable();
    // A table's oldest timestamp bounds the age of its oldest tombstone from below, so
    // a table can only hold a droppable tombstone if its min_timestamp is past grace.
    let drop_tombstones = inputs.iter().any(|t| {
        t.tombstones > 0 && gc_grace_passed(t.min_timestamp, now_ms, config.gc_grace_seconds)
    });
    CompactionTask {
        inputs: ids,
        drop_tombstones,
    }
}

fn assert_unique_ids(tables: &[TableSummary]) {
    let ids: BTreeSet<u64> = tables.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), tables.len(), "duplicate SSTable ids in snapshot");
}

/// Whether a version stamped `timestamp` is at least `gc_grace_seconds` old at `now_ms`.
pub fn gc_grace_passed(timestamp: Hlc, now_ms: u64, gc_grace_seconds: u64) -> bool {
    now_ms.saturating_sub(timestamp.physical_ms()) >= gc_grace_seconds.saturating_mul(1000)
}

/// Whether the compaction executor may drop the tombstone of `key` (its state after
/// merging all inputs is a tombstone only, newest timestamp `tombstone_ts`).
///
/// Safe only when gc_grace has passed (repair had time to carry the delete to every
/// replica) AND no table outside the compaction could hold older data for the key, which
/// the tombstone is still hiding. Conservative: a table whose key range covers the key
/// blocks the drop. Pass as `tables_outside` every live table that is not an input,
/// including those flushed while the compaction ran.
pub fn can_drop_tombstone(
    key: &[u8],
    tombstone_ts: Hlc,
    now_ms: u64,
    gc_grace_seconds: u64,
    tables_outside: &[TableSummary],
) -> bool {
    can_drop_tombstone_with(
        key,
        tombstone_ts,
        now_ms,
        gc_grace_seconds,
        tables_outside,
        |_, _| true,
    )
}

/// [`can_drop_tombstone`] with a finer test: a covering table blocks the drop only if
/// `may_contain(table, key)` (e.g. its bloom filter) says the key may be in it. A
/// `may_contain` that answers `false` for a table that holds the key resurrects data.
pub fn can_drop_tombstone_with(
    key: &[u8],
    tombstone_ts: Hlc,
    now_ms: u64,
    gc_grace_seconds: u64,
    tables_outside: &[TableSummary],
    mut may_contain: impl FnMut(&TableSummary, &[u8]) -> bool,
) -> bool {
    gc_grace_passed(tombstone_ts, now_ms, gc_grace_seconds)
        && !tables_outside
            .iter()
            .any(|table| table.covers_key(key) && may_contain(table, key))
}

/// Why a compaction (or flush) result cannot be applied to a live set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("compaction has no inputs")]
    EmptyInputs,
    #[error("compaction input SSTable {0} is not live")]
    InputNotLive(u64),
    #[error("compaction input SSTable {0} listed twice")]
    DuplicateInput(u64),
    #[error("output SSTable id {0} is already live or listed twice")]
    OutputIdInUse(u64),
}

/// The live set after `task` finished with `outputs`: inputs removed, outputs added,
/// sorted by id. Pure; the manifest persists the result.
pub fn apply_compaction_result(
    live: &[TableSummary],
    task: &CompactionTask,
    outputs: Vec<TableSummary>,
) -> Result<Vec<TableSummary>, ApplyError> {
    if task.inputs.is_empty() {
        return Err(ApplyError::EmptyInputs);
    }
    let live_ids: BTreeSet<u64> = live.iter().map(|t| t.id).collect();
    let mut inputs = BTreeSet::new();
    for &id in &task.inputs {
        if !live_ids.contains(&id) {
            return Err(ApplyError::InputNotLive(id));
        }
        if !inputs.insert(id) {
            return Err(ApplyError::DuplicateInput(id));
        }
    }
    let mut next: Vec<TableSummary> = live
        .iter()
        .filter(|t| !inputs.contains(&t.id))
        .cloned()
        .collect();
    let mut ids: BTreeSet<u64> = live_ids;
    for output in outputs {
        if !ids.insert(output.id) {
            return Err(ApplyError::OutputIdInUse(output.id));
        }
        next.push(output);
    }
    next.sort_by_key(|t| t.id);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    fn table(id: u64, size_bytes: u64) -> TableSummary {
        TableSummary {
            id,
            size_bytes,
            min_key: b"a".to_vec(),
            max_key: b"z".to_vec(),
            min_timestamp: Hlc::new(1_000, 0),
            max_timestamp: Hlc::new(2_000, 0),
            tombstones: 0,
            entries: 10,
            created_seq: id,
        }
    }

    fn ranged(id: u64, min_key: &[u8], max_key: &[u8]) -> TableSummary {
        TableSummary {
            min_key: min_key.to_vec(),
            max_key: max_key.to_vec(),
            ..table(id, MIB)
        }
    }

    #[test]
    fn fewer_than_min_threshold_plans_nothing() {
        let config = CompactionConfig::default();
        let tables: Vec<_> = (1..=3).map(|id| table(id, MIB)).collect();
        assert_eq!(plan_size_tiered(&tables, &config, 0), None);
    }

    #[test]
    fn small_tables_share_a_tier_whatever_their_ratio() {
        let config = CompactionConfig::default();
        let tables = vec![
            table(1, 1),
            table(2, MIB),
            table(3, 10 * MIB),
            table(4, 49 * MIB),
        ];
        let task = plan_size_tiered(&tables, &config, 0).expect("a task");
        assert_eq!(task.inputs, vec![1, 2, 3, 4]);
        assert!(!task.drop_tombstones);
    }

    #[test]
    fn picks_the_tier_with_most_tables() {
        let config = CompactionConfig::default();
        let mut tables: Vec<_> = (1..=4).map(|id| table(id, MIB)).collect();
        tables.extend((10..=14).map(|id| table(id, 200 * MIB)));
        let task = plan_size_tiered(&tables, &config, 0).expect("a task");
        assert_eq!(task.inputs, vec![10, 11, 12, 13, 14]);
    }

    #[test]
    fn ties_go_to_the_smaller_total_size() {
        let config = CompactionConfig::default();
        let mut tables: Vec<_> = (10..=13).map(|id| table(id, 1000 * MIB)).collect();
        tables.extend((1..=4).map(|id| table(id, 100 * MIB)));
        let task = plan_size_tiered(&tables, &config, 0).expect("a task");
        assert_eq!(task.inputs, vec![1, 2, 3, 4]);
    }

    #[test]
    fn dissimilar_sizes_are_not_merged() {
        let config = CompactionConfig::default();
        let tables = vec![
            table(1, 100 * MIB),
            table(2, 200 * MIB),
            table(3, 400 * MIB),
            table(4, 800 * MIB),
        ];
        assert_eq!(size_tiers(&tables, &config).len(), 4);
        assert_eq!(plan_size_tiered(&tables, &config, 0), None);
    }

    #[test]
    fn caps_at_max_threshold_taking_the_smallest() {
        let config = CompactionConfig {
            max_threshold: 5,
            ..CompactionConfig::default()
        };
        let tables: Vec<_> = (1..=8).map(|id| table(id, 100 * MIB + 9 - id)).collect();
        let task = plan_size_tiered(&tables, &config, 0).expect("a task");
        assert_eq!(task.inputs, vec![4, 5, 6, 7, 8]);
    }

    #[test]
    fn drop_tombstones_only_when_some_input_is_past_grace() {
        let config = CompactionConfig {
            gc_grace_seconds: 10,
            ..CompactionConfig::default()
        };
        let mut tables: Vec<_> = (1..=4).map(|id| table(id, MIB)).collect();
        tables[2].tombstones = 3;
        // min_timestamp is 1_000 ms: grace passes at 11_000 ms.
        let early = plan_size_tiered(&tables, &config, 10_999).expect("a task");
        assert!(!early.drop_tombstones);
        let late = plan_size_tiered(&tables, &config, 11_000).expect("a task");
        assert!(late.drop_tombstones);
        tables[2].tombstones = 0;
        let none = plan_size_tiered(&tables, &config, 1 << 40).expect("a task");
        assert!(!none.drop_tombstones);
    }

    #[test]
    fn major_takes_everything() {
        let config = CompactionConfig::default();
        let tables = vec![table(7, 1), table(3, 900 * MIB), table(5, 2)];
        let task = plan_major(&tables, &config, 0).expect("a task");
        assert_eq!(task.inputs, vec![3, 5, 7]);
        assert_eq!(plan_major(&[], &config, 0), None);
        assert_eq!(plan_major(&tables[..1], &config, 0), None);
        let mut lone = table(1, 1);
        lone.tombstones = 1;
        let purge = plan_major(&[lone], &config, u64::MAX).expect("a purge task");
        assert!(purge.drop_tombstones);
    }

    #[test]
    fn tombstone_needs_grace_and_no_covering_outside_table() {
        let ts = Hlc::new(1_000, 5);
        let grace_s = 1;
        let outside = vec![ranged(1, b"a", b"c"), ranged(2, b"m", b"p")];
        // Before grace: never.
        assert!(!can_drop_tombstone(b"x", ts, 1_999, grace_s, &[]));
        // After grace, key outside every range: yes.
        assert!(can_drop_tombstone(b"x", ts, 2_000, grace_s, &outside));
        assert!(can_drop_tombstone(b"d", ts, 2_000, grace_s, &outside));
        // Key inside a range, range bounds inclusive: no.
        assert!(!can_drop_tombstone(b"b", ts, 2_000, grace_s, &outside));
        assert!(!can_drop_tombstone(b"m", ts, 2_000, grace_s, &outside));
        assert!(!can_drop_tombstone(b"p", ts, 2_000, grace_s, &outside));
        // A bloom filter that rules the key out lets it go; one that does not, blocks.
        assert!(can_drop_tombstone_with(
            b"b",
            ts,
            2_000,
            grace_s,
            &outside,
            |_, _| false
        ));
        assert!(!can_drop_tombstone_with(
            b"b",
            ts,
            2_000,
            grace_s,
            &outside,
            |t, _| t.id == 1
        ));
        assert!(can_drop_tombstone_with(
            b"b",
            ts,
            2_000,
            grace_s,
            &outside,
            |t, _| t.id == 2
        ));
    }

    #[test]
    fn apply_replaces_inputs_with_outputs() {
        let live = vec![table(1, 1), table(2, 2), table(3, 3), table(4, 4)];
        let task = CompactionTask {
            inputs: vec![1, 3],
            drop_tombstones: false,
        };
        let next = apply_compaction_result(&live, &task, vec![table(9, 4)]).expect("applies");
        let ids: Vec<u64> = next.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![2, 4, 9]);
        let missing = CompactionTask {
            inputs: vec![1, 8],
            drop_tombstones: false,
        };
        assert_eq!(
            apply_compaction_result(&live, &missing, vec![]),
            Err(ApplyError::InputNotLive(8))
        );
        assert_eq!(
            apply_compaction_result(&live, &task, vec![table(2, 1)]),
            Err(ApplyError::OutputIdInUse(2))
        );
        assert_eq!(
            apply_compaction_result(&live, &task, vec![table(9, 1), table(9, 1)]),
            Err(ApplyError::OutputIdInUse(9))
        );
        let twice = CompactionTask {
            inputs: vec![1, 1],
            drop_tombstones: false,
        };
        assert_eq!(
            apply_compaction_result(&live, &twice, vec![]),
            Err(ApplyError::DuplicateInput(1))
        );
    }

    fn arb_tables() -> impl Strategy<Value = Vec<TableSummary>> {
        // Sizes from a few bytes to a few GiB, exponentially spread.
        prop::collection::vec((0u32..33, 0u64..1024, 0u64..3), 0..60).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (shift, low, tombstones))| TableSummary {
                    tombstones,
                    ..table(i as u64 * 3 + 1, (1u64 << shift) + low)
                })
                .collect()
        })
    }

    fn arb_config() -> impl Strategy<Value = CompactionConfig> {
        (
            2usize..8,
            0usize..40,
            0.2f64..0.9,
            1.1f64..3.0,
            1u64..(64 * MIB),
        )
            .prop_map(
                |(min_threshold, extra, bucket_low, bucket_high, min_sstable_size_bytes)| {
                    CompactionConfig {
                        min_threshold,
                        max_threshold: min_threshold + extra,
                        bucket_low,
                        bucket_high,
                        min_sstable_size_bytes,
                        gc_grace_seconds: 10,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn plan_is_a_bounded_subset_and_deterministic(
            tables in arb_tables(),
            config in arb_config(),
            now_ms in 0u64..20_000,
            rotation in 0usize..60,
        ) {
            let plan = plan_size_tiered(&tables, &config, now_ms);
            // Deterministic, even when the snapshot comes in another order.
            let mut rotated = tables.clone();
            if !rotated.is_empty() {
                let by = rotation % rotated.len();
                rotated.rotate_left(by);
                rotated.reverse();
            }
            prop_assert_eq!(&plan, &plan_size_tiered(&rotated, &config, now_ms));

            let tiers = size_tiers(&tables, &config);
            let due = tiers.iter().filter(|t| t.len() >= config.min_threshold).count();
            prop_assert_eq!(plan.is_some(), due > 0);
            if let Some(task) = plan {
                prop_assert!(task.inputs.len() >= config.min_threshold);
                prop_assert!(task.inputs.len() <= config.max_threshold);
                prop_assert!(task.inputs.windows(2).all(|w| w[0] < w[1]));
                let live: BTreeSet<u64> = tables.iter().map(|t| t.id).collect();
                prop_assert!(task.inputs.iter().all(|id| live.contains(id)));
                // All inputs come from one tier, and no tier offers more tables.
                let tier = tiers
                    .iter()
                    .find(|tier| tier.iter().any(|t| t.id == task.inputs[0]))
                    .expect("input belongs to a tier");
                prop_assert!(task.inputs.iter().all(|id| tier.iter().any(|t| t.id == *id)));
                let most = tiers.iter().map(|t| t.len().min(config.max_threshold)).max();
                prop_assert_eq!(Some(task.inputs.len()), most);
            }
        }

        #[test]
        fn major_covers_all_tables(tables in arb_tables(), config in arb_config()) {
            match plan_major(&tables, &config, 1 << 40) {
                Some(task) => {
                    let mut ids: Vec<u64> = tables.iter().map(|t| t.id).collect();
                    ids.sort_unstable();
                    prop_assert_eq!(task.inputs, ids);
                }
                None => prop_assert!(tables.len() <= 1),
            }
        }

        /// Compaction simulator (no I/O): flush tables of random sizes, then plan and
        /// apply until nothing is due. Bytes are conserved and the table count stays
        /// within the logarithmic bound of the module doc.
        #[test]
        fn simulator_keeps_table_count_logarithmic(
            config in arb_config(),
            flush_sizes in prop::collection::vec(1u64..(8 * MIB), 1..300),
        ) {
            let mut live: Vec<TableSummary> = Vec::new();
            let mut next_id = 1u64;
            let mut total_bytes = 0u64;
            for (seq, size) in flush_sizes.into_iter().enumerate() {
                live.push(TableSummary { created_seq: seq as u64, ..table(next_id, size) });
                next_id += 1;
                total_bytes += size;
                // Each compaction removes at least one table, so this loop is bounded.
                for _ in 0..live.len() {
                    let Some(task) = plan_size_tiered(&live, &config, 0) else { break };
                    let inputs: Vec<&TableSummary> =
                        live.iter().filter(|t| task.inputs.contains(&t.id)).collect();
                    let output = TableSummary {
                        size_bytes: inputs.iter().map(|t| t.size_bytes).sum(),
                        entries: inputs.iter().map(|t| t.entries).sum(),
                        created_seq: inputs.iter().map(|t| t.created_seq).max().unwrap_or(0),
                        ..table(next_id, 0)
                    };
                    next_id += 1;
                    live = apply_compaction_result(&live, &task, vec![output])
                        .expect("planned task applies");
                }
                prop_assert_eq!(plan_size_tiered(&live, &config, 0), None);
                prop_assert_eq!(live.iter().map(|t| t.size_bytes).sum::<u64>(), total_bytes);

                let ratio = total_bytes.max(config.min_sstable_size_bytes) as f64
                    / config.min_sstable_size_bytes as f64;
                // +1 tier of slack for floating-point rounding of tier averages.
                let tiers_max = 3 + ratio.log(config.bucket_high).floor() as usize;
                prop_assert!(size_tiers(&live, &config).len() <= tiers_max);
                prop_assert!(
                    live.len() <= (config.min_threshold - 1) * tiers_max,
                    "{} tables, bound {}", live.len(), (config.min_threshold - 1) * tiers_max
                );
            }
        }
    }
}
