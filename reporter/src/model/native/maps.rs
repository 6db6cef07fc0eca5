//! The tracked process's memory maps as the capture records them: a MEMORY_MAP_START
//! opens a new generation (at start and after each `dlopen`/`dlclose`), followed by one
//! SEGMENT_HEADER per loaded object and one SEGMENT per `PT_LOAD`. Each allocation
//! remembers the generation current when it was made, so an address is resolved against
//! the objects that were loaded at that moment.

use std::collections::HashMap;
use std::rc::Rc;

use memray_capture::Segment;

/// Index of a distinct (object file, load address).
pub type ImageId = u32;

/// A loaded object: its path and where it was loaded (the bias added to its ELF
/// virtual addresses).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Image {
    pub filename: Rc<str>,
    pub load_addr: u64,
}

#[derive(Default)]
struct Generation {
    /// (start, end, image), absolute addresses; sorted by start when `sorted`.
    ranges: Vec<(u64, u64, ImageId)>,
    sorted: bool,
}

/// Every generation of the memory maps, and the objects they name.
#[derive(Default)]
pub struct MemoryMaps {
    images: Vec<Image>,
    image_ids: HashMap<Image, ImageId>,
    /// Generation `g` (1-based, as allocations count them) is `generations[g - 1]`.
    generations: Vec<Generation>,
    /// The object whose SEGMENT records are being read.
    current: Option<ImageId>,
}

impl MemoryMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// MEMORY_MAP_START.
    pub fn start_generation(&mut self) {
        self.generations.push(Generation::default());
        self.current = None;
    }

    /// SEGMENT_HEADER: the object the following SEGMENT records belong to.
    pub fn object(&mut self, filename: &str, load_addr: u64) {
        if self.generations.is_empty() {
            // A segment list without its MEMORY_MAP_START: treat it as generation 1.
            self.start_generation();
        }
        let image = Image { filename: Rc::from(filename), load_addr };
        let next = self.images.len() as ImageId;
        let id = *self.image_ids.entry(image.clone()).or_insert(next);
        if id == next {
            self.images.push(image);
        }
        self.current = Some(id);
    }

    /// SEGMENT: a `PT_LOAD` of the current object (`vaddr` relative to its load address).
    pub fn segment(&mut self, segment: Segment) {
        let (Some(image), Some(generation)) = (self.current, self.generations.last_mut()) else { return };
        let load = self.images[image as usize].load_addr;
        let start = load.wrapping_add(segment.vaddr);
        let end = start.saturating_add(segment.memsz);
        if end > start {
            generation.ranges.push((start, end, image));
            generation.sorted = false;
        }
    }

    pub fn n_generations(&self) -> u64 {
        self.generations.len() as u64
    }

    pub fn image(&self, id: ImageId) -> &Image {
        &self.images[id as usize]
    }

    /// The object holding `ip` in `generation`, and `ip` as an ELF virtual address of
    /// that object. `None`: no object of that generation covers it (Memray then shows
    /// no frame for it).
    pub fn lookup(&mut self, generation: u64, ip: u64) -> Option<(ImageId, u64)> {
        let g = self.generations.get_mut((generation as usize).checked_sub(1)?)?;
        if !g.sorted {
            g.ranges.sort_unstable();
            g.sorted = true;
        }
        let i = g.ranges.partition_point(|&(start, _, _)| start <= ip);
        // Segments of one object never overlap another's; the last range starting at or
        // before `ip` is the only candidate.
        let &(start, end, image) = g.ranges.get(i.checked_sub(1)?)?;
        debug_assert!(start <= ip);
        (ip < end).then(|| (image, ip.wrapping_sub(self.images[image as usize].load_addr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_uses_the_allocation_generation() {
        let mut m = MemoryMaps::new();
        m.start_generation();
        m.object("/bin/python", 0x400000);
        m.segment(Segment { vaddr: 0, memsz: 0x1000 });
        m.segment(Segment { vaddr: 0x2000, memsz: 0x1000 });
        m.start_generation();
        m.object("/bin/python", 0x400000);
        m.segment(Segment { vaddr: 0, memsz: 0x1000 });
        m.object("/lib/ext.so", 0x7f0000000000);
        m.segment(Segment { vaddr: 0x1000, memsz: 0x500 });
        assert_eq!(m.n_generations(), 2);
        let (img, off) = m.lookup(1, 0x402010).unwrap();
        assert_eq!((&*m.image(img).filename, off), ("/bin/python", 0x2010));
        assert_eq!(m.lookup(1, 0x401000), None, "between segments");
        assert_eq!(m.lookup(1, 0x7f0000001010), None, "not loaded yet in generation 1");
        let (img, off) = m.lookup(2, 0x7f0000001010).unwrap();
        assert_eq!((&*m.image(img).filename, off), ("/lib/ext.so", 0x1010));
        assert_eq!(m.lookup(2, 0x402010), None, "segment gone in generation 2");
        assert_eq!(m.lookup(0, 0x400010), None, "generation 0 has no maps");
        assert_eq!(m.lookup(3, 0x400010), None);
        let (a, _) = m.lookup(1, 0x400010).unwrap();
        let (b, _) = m.lookup(2, 0x400010).unwrap();
        assert_eq!(a, b, "same object, same load address: one image");
    }
}
