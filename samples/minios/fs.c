/* The disk's file table (disk.h, written by mkdisk.py): read once at boot from
 * sector 0 and checked, so that later reads can trust it. */
#include "minios.h"
#include "disk.h"

static struct disk_header table;

static int name_is(const struct disk_entry *e, const char *name)
{
    u32 i;

    for (i = 0; i < DISK_NAME_MAX; i++) {
        if (e->name[i] != name[i])
            return 0;
        if (!name[i])
            return 1;
    }
    return name[DISK_NAME_MAX] == '\0';
}

/* Returns the number of files, or -1 for a disk that is not a minios disk. */
int fs_init(u32 disk_sectors)
{
    u8 sector[SECTOR_SIZE];
    u32 i;

    if (ide_read(0, sector))
        return -1;
    memcpy(&table, sector, sizeof(table));
    if (strncmp(table.magic, DISK_MAGIC, sizeof(table.magic)) || table.nfiles > DISK_MAX_FILES)
        return -1;
    for (i = 0; i < table.nfiles; i++) {
        const struct disk_entry *e = &table.files[i];
        u32 sectors = (e->size + SECTOR_SIZE - 1) / SECTOR_SIZE;

        if (e->lba == 0 || e->lba >= disk_sectors || sectors > disk_sectors - e->lba)
            return -1;
    }
    return (int)table.nfiles;
}

const struct disk_entry *fs_entry(u32 index)
{
    return index < table.nfiles ? &table.files[index] : NULL;
}

const struct disk_entry *fs_find(const char *name)
{
    u32 i;

    for (i = 0; i < table.nfiles; i++)
        if (name_is(&table.files[i], name))
            return &table.files[i];
    return NULL;
}

/* Bytes [offset, offset + n) of a file into a kernel buffer; returns how many
 * there were (fewer at the end of the file), -1 on a disk error. The sector
 * buffer is on this kernel stack: another process may read while this one sleeps. */
int fs_read(const struct disk_entry *e, u32 offset, void *buf, u32 n)
{
    u8 sector[SECTOR_SIZE];
    u8 *out = buf;
    u32 got = 0;

    if (offset >= e->size)
        return 0;
    if (n > e->size - offset)
        n = e->size - offset;
    while (got < n) {
        u32 pos = offset + got, skip = pos % SECTOR_SIZE;
        u32 take = SECTOR_SIZE - skip < n - got ? SECTOR_SIZE - skip : n - got;

        if (ide_read(e->lba + pos / SECTOR_SIZE, sector))
            return -1;
        memcpy(out + got, sector + skip, take);
        got += take;
    }
    return (int)got;
}
