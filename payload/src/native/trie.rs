//! The native frame tree of a capture: every distinct stack is a path of (parent node, ip)
//! nodes from the outermost frame, as Memray's format stores it. Node ids are 1, 2, ... in
//! creation order; 0 is the empty stack. Each new node is reported once, so the writer can
//! emit its NATIVE_TRACE_INDEX record before the allocation that uses it.
//!
//! Each thread keeps the path of its previous stack (`Prefix`): consecutive stacks of a
//! thread share most of their outer frames, and those need no lookup.

use memray_capture::fasthash::FastMap;

/// A thread's previous stack as (ip, node id), outermost first.
pub type Prefix = Vec<(u64, u64)>;

#[derive(Default)]
pub struct NativeTrie {
    nodes: FastMap<(u64, u64), u64>,
}

impl NativeTrie {
    /// The node id of the stack `ips` (innermost first), creating missing nodes; `emit`
    /// gets (ip, parent) of each new node in creation order. `prefix` is the calling
    /// thread's previous path and becomes this one.
    pub fn intern(&mut self, ips: &[u64], prefix: &mut Prefix, mut emit: impl FnMut(u64, u64)) -> u64 {
        let outer_first = ips.iter().rev();
        let shared = prefix.iter().zip(outer_first.clone()).take_while(|((p, _), ip)| p == *ip).count();
        prefix.truncate(shared);
        let mut parent = prefix.last().map_or(0, |&(_, id)| id);
        for &ip in outer_first.skip(shared) {
            let next = self.nodes.len() as u64 + 1;
            let id = *self.nodes.entry((parent, ip)).or_insert(next);
            if id == next {
                emit(ip, parent);
            }
            prefix.push((ip, id));
            parent = id;
        }
        parent
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_outer_frames_and_numbers_nodes_from_one() {
        let mut trie = NativeTrie::default();
        let mut emitted = Vec::new();
        let mut prefix = Prefix::new();
        // innermost first: c <- b <- a
        let leaf1 = trie.intern(&[0xc, 0xb, 0xa], &mut prefix, |ip, p| emitted.push((ip, p)));
        assert_eq!(emitted, vec![(0xa, 0), (0xb, 1), (0xc, 2)]);
        assert_eq!(leaf1, 3);
        let leaf2 = trie.intern(&[0xd, 0xb, 0xa], &mut prefix, |ip, p| emitted.push((ip, p)));
        assert_eq!(leaf2, 4);
        assert_eq!(emitted.last(), Some(&(0xd, 2)));
        // Another thread (empty prefix) finds the same nodes without emitting.
        let mut other = Prefix::new();
        assert_eq!(trie.intern(&[0xc, 0xb, 0xa], &mut other, |_, _| panic!("no new node")), 3);
        assert_eq!(trie.intern(&[], &mut other, |_, _| panic!("no new node")), 0);
        assert_eq!(trie.len(), 4);
    }
}
