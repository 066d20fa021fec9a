//! Who checks a server: rendezvous (highest-random-weight) hashing over the
//! live nodes that have traffic for its origin. Every node computes the same
//! answer from the same membership, with no coordination; when a node
//! leaves, only the servers it owned move, spread over the others.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The node among `nodes` that checks `server` (a [`server_key`](crate::server_key)).
/// Ties (astronomically rare) go to the greater node id, so every node
/// agrees. `None` when `nodes` is empty.
///
/// ```
/// let nodes = ["edge-1", "edge-2", "edge-3"];
/// let key = 0x1234_5678_9abc_def0;
/// let owner = *vigil_cluster::owner(key, &nodes).unwrap();
/// // Another node leaving does not move this server.
/// let gone = nodes.iter().copied().find(|n| *n != owner).unwrap();
/// let fewer: Vec<&str> = nodes.iter().copied().filter(|n| *n != gone).collect();
/// assert_eq!(vigil_cluster::owner(key, &fewer), Some(&owner));
/// ```
pub fn owner<N: AsRef<str>>(server: u64, nodes: &[N]) -> Option<&N> {
    nodes.iter().max_by(|a, b| {
        let (a, b) = (a.as_ref(), b.as_ref());
        score(server, a).cmp(&score(server, b)).then_with(|| a.cmp(b))
    })
}

/// [`owner`] over node ids given as an iterator, without collecting them.
///
/// ```
/// let nodes = ["edge-1", "edge-2", "edge-3"];
/// let key = 0x1234_5678_9abc_def0;
/// assert_eq!(vigil_cluster::owner_in(key, nodes), vigil_cluster::owner(key, &nodes).copied());
/// ```
pub fn owner_in<'a>(server: u64, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by(|a, b| score(server, a).cmp(&score(server, b)).then_with(|| a.cmp(b)))
}

fn score(server: u64, node: &str) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_and_a_departure_moves_only_its_share() {
        let nodes: Vec<String> = (1..=5).map(|i| format!("edge-{i}")).collect();
        let keys: Vec<u64> = (0..10_000u64).map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())).collect();
        let before: Vec<&String> = keys.iter().map(|k| owner(*k, &nodes).unwrap()).collect();
        for n in &nodes {
            let share = before.iter().filter(|o| **o == n).count();
            assert!((1_700..2_300).contains(&share), "{n} owns {share} of 10000");
        }
        let without: Vec<String> = nodes.iter().filter(|n| *n != "edge-3").cloned().collect();
        for (k, was) in keys.iter().zip(&before) {
            let now = owner(*k, &without).unwrap();
            if *was != "edge-3" {
                assert_eq!(now, *was, "a server not owned by the leaver moved");
            }
        }
        assert_eq!(owner::<String>(1, &[]), None);
    }

    #[test]
    fn order_of_the_member_list_does_not_matter() {
        let a = ["x", "y", "z"];
        let b = ["z", "x", "y"];
        for k in 0..1000 {
            assert_eq!(owner(k, &a), owner(k, &b));
        }
    }
}
