/* The disk image's format (built by mkdisk.py): sector 0 holds a header and a
 * file table, each file starts on a sector boundary. */
#ifndef MINIOS_DISK_H
#define MINIOS_DISK_H

#define SECTOR_SIZE 512
#define DISK_MAGIC "MINIOSFS"
#define DISK_MAX_FILES 15
#define DISK_NAME_MAX 24            /* NUL-padded; a name of 24 characters has no NUL */

struct disk_entry {
    char name[DISK_NAME_MAX];
    unsigned int lba;               /* first sector */
    unsigned int size;              /* bytes */
};

struct disk_header {
    char magic[8];
    unsigned int nfiles;
    unsigned int reserved;
    struct disk_entry files[DISK_MAX_FILES];    /* 16 + 15 * 32 = 496 bytes: fits sector 0 */
};

#endif
