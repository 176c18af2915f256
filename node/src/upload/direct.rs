//! Writing a stream of bytes at increasing offsets of one file, bypassing the page cache for
//! whole aligned blocks (`O_DIRECT`).
//!
//! A pushed blob is written once and fsynced; read back soon it may be, but by then the page
//! cache holds what was read, not a second copy of every byte pushed. Through the page cache,
//! each gigabyte pushed is first copied into freshly allocated cache pages, and on a virtual
//! machine whose host backs guest memory lazily those first touches cost from half a second to
//! over two seconds of CPU per gigabyte; a direct write of the same gigabyte costs about a fifth
//! of a second, every time (docs/benchmarks.md). The blocks go to the disk from one reused,
//! aligned buffer. The unaligned head of a write that starts mid-block, and the tail that does
//! not fill a block, go through the page cache as before; the caller's `fdatasync` makes both
//! kinds durable. A filesystem without `O_DIRECT` (or refusing it for this file) gets every
//! byte through the page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of direct writes' offsets, lengths and memory: the largest logical block size in
/// common use, so it suits every device.
pub const ALIGN: usize = 4096;

/// Bytes gathered before one direct write.
const BUFFER: usize = 1 << 20;

/// A writer at increasing offsets of a file, from `start`.
pub struct DirectWriter<'f> {
    /// The file opened normally: the head, the tail, and everything when `direct` is `None`.
    file: &'f File,
    /// The same file opened with `O_DIRECT`.
    direct: Option<File>,
    /// Backing memory of the aligned buffer; `buf_at` is where the aligned part starts.
    mem: Vec<u8>,
    buf_at: usize,
    /// Bytes gathered in the buffer.
    len: usize,
    /// File offset of the buffer's first byte, or of the next byte when there is no buffer.
    pos: u64,
}

impl<'f> DirectWriter<'f> {
    /// Write `file` (opened at `path`) from `start`.
    pub fn new(file: &'f File, path: &Path, start: u64) -> DirectWriter<'f> {
        Self::open(file, path, start, true)
    }

    fn open(file: &'f File, path: &Path, start: u64, try_direct: bool) -> DirectWriter<'f> {
        let direct = try_direct
            .then(|| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten();
        let (mem, buf_at) = match direct {
            Some(_) => {
                let mem = vec![0u8; BUFFER + ALIGN];
                let at = mem.as_ptr().align_offset(ALIGN);
                (mem, at)
            }
            None => (Vec::new(), 0),
        };
        DirectWriter {
            file,
            direct,
            mem,
            buf_at,
            len: 0,
            pos: start,
        }
    }

    /// Append `data`.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        // The head: through the page cache up to the first block boundary.
        if self.direct.is_some() && self.len == 0 && !(self.pos as usize).is_multiple_of(ALIGN) {
            let to_boundary = ALIGN - (self.pos as usize % ALIGN);
            let n = to_boundary.min(data.len());
            self.file.write_all_at(&data[..n], self.pos)?;
            self.pos += n as u64;
            data = &data[n..];
        }
        while !data.is_empty() {
            // Without direct writes (from the start, or since one was refused, which drained
            // the buffer) the rest goes through the page cache at once.
            if self.direct.is_none() {
                self.file.write_all_at(data, self.pos)?;
                self.pos += data.len() as u64;
                return Ok(());
            }
            let n = (BUFFER - self.len).min(data.len());
            let at = self.buf_at + self.len;
            self.mem[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == BUFFER {
                self.flush_blocks()?;
            }
        }
        Ok(())
    }

    /// Write the buffer's whole blocks directly and keep the rest (less than one block) at the
    /// buffer's start.
    fn flush_blocks(&mut self) -> io::Result<()> {
        let blocks = self.len - self.len % ALIGN;
        if blocks == 0 {
            return Ok(());
        }
        let Some(direct) = &self.direct else {
            unreachable!("flush_blocks is only called with a direct descriptor")
        };
        let buf = &self.mem[self.buf_at..self.buf_at + blocks];
        match direct.write_all_at(buf, self.pos) {
            Ok(()) => {}
            // Accepted at open but refused for writes (some filesystems): the page cache then.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.file.write_all_at(buf, self.pos)?;
                self.direct = None;
            }
            Err(e) => return Err(e),
        }
        self.pos += blocks as u64;
        let rest = self.len - blocks;
        let start = self.buf_at + blocks;
        self.mem.copy_within(start..start + rest, self.buf_at);
        self.len = rest;
        if self.direct.is_none() {
            self.drain_buffered()?;
        }
        Ok(())
    }

    /// Write whatever the buffer holds through the page cache.
    fn drain_buffered(&mut self) -> io::Result<()> {
        if self.len > 0 {
            let buf = &self.mem[self.buf_at..self.buf_at + self.len];
            self.file.write_all_at(buf, self.pos)?;
            self.pos += self.len as u64;
            self.len = 0;
        }
        Ok(())
    }

    /// Write everything gathered: whole blocks directly, the tail through the page cache. The
    /// caller's `fdatasync` makes it durable.
    pub fn finish(mut self) -> io::Result<()> {
        if self.direct.is_some() {
            self.flush_blocks()?;
        }
        self.drain_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ at every offset, so a misplaced block shows.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    /// Write `data` from `start` in pieces of `piece` bytes, directly where the filesystem
    /// allows and `direct`, else through the page cache alone.
    fn write_pieces(path: &Path, start: u64, data: &[u8], piece: usize, direct: bool) {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        let mut w = DirectWriter::open(&file, path, start, direct);
        for p in data.chunks(piece) {
            w.write(p).unwrap();
        }
        w.finish().unwrap();
        file.sync_data().unwrap();
    }

    /// Whether the test's temporary directory takes direct writes: the tests run both ways
    /// regardless, and say which.
    fn note_direct(dir: &Path) {
        let f = File::create(dir.join("probe")).unwrap();
        let w = DirectWriter::new(&f, &dir.join("probe"), 0);
        eprintln!("O_DIRECT under {}: {}", dir.display(), w.direct.is_some());
    }

    #[test]
    fn every_byte_lands_at_its_offset_whatever_the_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(u64, usize, usize); 7] = [
            (0, 0, 7),
            (0, 100, 7),
            (0, BUFFER * 2 + ALIGN, 65_536),
            (0, BUFFER * 3 + 12_345, 16_384),
            (1_000_000, BUFFER + 777, 1_000),
            (ALIGN as u64 * 3, ALIGN * 5, BUFFER),
            (4095, 3 * BUFFER + 1, 300_001),
        ];
        note_direct(dir.path());
        for ((n, (start, len, piece)), direct) in cases
            .into_iter()
            .enumerate()
            .flat_map(|c| [(c, true), (c, false)])
        {
            let path = dir.path().join(format!("f{n}-{direct}"));
            let data = pattern(len, n as u32);
            write_pieces(&path, start, &data, piece, direct);
            let got = std::fs::read(&path).unwrap();
            let expect_len = if len == 0 { 0 } else { start as usize + len };
            assert_eq!(got.len(), expect_len, "case {n}, direct {direct}");
            if len > 0 {
                assert!(got[..start as usize].iter().all(|b| *b == 0), "case {n}: hole");
                assert!(
                    got[start as usize..] == data[..],
                    "case {n}, direct {direct}: bytes differ"
                );
            }
        }
    }

    #[test]
    fn a_refused_direct_write_falls_back_without_losing_or_moving_a_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refused");
        let data = pattern(3 * BUFFER + 12_345, 9);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        let mut w = DirectWriter::new(&file, &path, 0);
        let direct = w.direct.is_some();
        if direct {
            // A buffer off its alignment by one byte: the kernel refuses the direct write with
            // EINVAL, as a filesystem that accepts O_DIRECT at open but not for writes does.
            w.mem = vec![0; BUFFER + ALIGN + 1];
            w.buf_at = w.mem.as_ptr().align_offset(ALIGN) + 1;
        }
        // One write of more than two buffers: the refusal comes in the middle of it.
        w.write(&data[..2 * BUFFER + 100]).unwrap();
        assert!(w.direct.is_none(), "the refused descriptor is given up");
        w.write(&data[2 * BUFFER + 100..]).unwrap();
        w.finish().unwrap();
        file.sync_data().unwrap();
        eprintln!("O_DIRECT under {}: {direct}", dir.path().display());
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn appends_continue_one_another_and_fill_holes_between_others() {
        let dir = tempfile::tempdir().unwrap();
        note_direct(dir.path());
        let data = pattern(5 * BUFFER / 2 + 999, 7);
        for direct in [true, false] {
            let path = dir.path().join(format!("upload-{direct}"));
            // Chunks of odd sizes, as PATCHes arrive: each starts where the last ended.
            let cuts = [0, 1_000_000, 1_000_001, 2_300_000, data.len()];
            for w in cuts.windows(2) {
                write_pieces(&path, w[0] as u64, &data[w[0]..w[1]], 8_192, direct);
            }
            assert!(std::fs::read(&path).unwrap() == data, "direct {direct}");
            // A hole filled later (a chunk copied from its holder), between bytes already there.
            let path = dir.path().join(format!("sparse-{direct}"));
            write_pieces(&path, 0, &data[..10_000], 4_096, direct);
            write_pieces(&path, 1_500_000, &data[1_500_000..], 50_000, direct);
            write_pieces(&path, 10_000, &data[10_000..1_500_000], 33_333, direct);
            assert!(std::fs::read(&path).unwrap() == data, "direct {direct}");
        }
    }
}
