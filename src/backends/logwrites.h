/* The on-disk format of dm-log-writes (drivers/md/dm-log-writes.c), shared
 * by the log-writes layer, which writes it, and `thinstack replay-log`,
 * which reads it. All integers little-endian; "sectors" are blocks of the
 * log's sectorsize. */
#ifndef TS_BACKENDS_LOGWRITES_H
#define TS_BACKENDS_LOGWRITES_H

#define LW_MAGIC 0x6a736677736872ull
#define LW_VERSION 1

/* Super block, at byte 0: magic, version, nr_entries (u64), sectorsize (u32). */
#define LW_SUPER_MAGIC 0
#define LW_SUPER_VERSION 8
#define LW_SUPER_ENTRIES 16
#define LW_SUPER_SECTORSIZE 24

/* Entry block: sector, nr_sectors, flags, data_len (u64 each), then a
 * mark's text; a write's data follows in the next nr_sectors blocks. */
#define LW_ENTRY_SECTOR 0
#define LW_ENTRY_NR 8
#define LW_ENTRY_FLAGS 16
#define LW_ENTRY_DATA_LEN 24
#define LW_ENTRY_SIZE 32

#define LW_FLUSH (1u << 0)
#define LW_FUA (1u << 1)
#define LW_DISCARD (1u << 2)
#define LW_MARK (1u << 3)
#define LW_METADATA (1u << 4)

#endif
