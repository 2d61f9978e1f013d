/* The MultiProcessor Specification 1.4 tables the BIOS leaves in memory: how an
 * OS finds the local APIC and the I/O APIC without hard-coding them (xv6 does the
 * same). QEMU's SeaBIOS writes them; a VMM that offers APICs must too. Read with
 * paging off: the BIOS data area is in page 0, which minios leaves unmapped. */
#include "minios.h"

#define BDA_EBDA_SEGMENT 0x40E          /* u16: real-mode segment of the EBDA */
#define BDA_BASE_KIB 0x413              /* u16: base memory size in KiB */

struct PACKED mp_pointer {              /* MP spec 4.1: the floating pointer */
    char signature[4];                  /* "_MP_" */
    u32 config;                         /* physical address of the configuration table */
    u8 length;                          /* in 16-byte units: 1 */
    u8 revision;
    u8 checksum;
    u8 type;                            /* 0: a configuration table is present */
    u8 features2;                       /* bit 7: IMCR present (PIC mode at boot) */
    u8 reserved[3];
};

struct PACKED mp_config {               /* MP spec 4.2: the configuration table header */
    char signature[4];                  /* "PCMP" */
    u16 length;
    u8 revision;
    u8 checksum;
    char oem[8];
    char product[12];
    u32 oem_table;
    u16 oem_length;
    u16 entries;
    u32 lapic;
    u16 ext_length;
    u8 ext_checksum;
    u8 reserved;
};

enum { MP_PROCESSOR = 0, MP_BUS = 1, MP_IOAPIC = 2, MP_IOINTR = 3, MP_LINTR = 4 };

/* A u16 of the BIOS data area. The empty asm hides the constant address from gcc,
 * which otherwise takes a pointer into page 0 for a NULL-based one (-Warray-bounds). */
static u16 bda_u16(u32 addr)
{
    __asm__("" : "+r"(addr));
    return *(volatile u16 *)addr;
}

static u8 sum(const u8 *p, u32 n)
{
    u8 s = 0;

    while (n--)
        s += *p++;
    return s;
}

static const struct mp_pointer *search(u32 start, u32 len)
{
    u32 a;

    for (a = start; a + sizeof(struct mp_pointer) <= start + len; a += 16) {
        const struct mp_pointer *p = (const struct mp_pointer *)a;

        if (!strncmp(p->signature, "_MP_", 4) && p->length == 1 && sum((const u8 *)p, 16) == 0)
            return p;
    }
    return NULL;
}

/* Spec 4: the first KiB of the EBDA, else the last KiB of base memory, then the
 * BIOS ROM at 0xF0000-0xFFFFF. */
static const struct mp_pointer *find_pointer(void)
{
    u32 ebda = (u32)bda_u16(BDA_EBDA_SEGMENT) << 4;
    const struct mp_pointer *p = NULL;

    if (ebda)
        p = search(ebda, 1024);
    else
        p = search(((u32)bda_u16(BDA_BASE_KIB) << 10) - 1024, 1024);
    return p ? p : search(0xF0000, 0x10000);
}

int mp_find(struct mp_info *mp)
{
    const struct mp_pointer *p = find_pointer();
    const struct mp_config *c;
    const u8 *e, *end;
    u32 i;

    if (!p || !p->config || p->type != 0)
        return -1;
    c = (const struct mp_config *)p->config;
    if (strncmp(c->signature, "PCMP", 4) || (c->revision != 1 && c->revision != 4)
        || sum((const u8 *)c, c->length) != 0)
        return -1;
    mp->lapic = c->lapic;
    mp->cpus = mp->ioapics = 0;
    mp->imcr = (p->features2 & 0x80) != 0;
    e = (const u8 *)(c + 1);
    end = (const u8 *)c + c->length;
    for (i = 0; i < c->entries && e < end; i++) {
        switch (*e) {
        case MP_PROCESSOR:
            if (e[3] & 1)               /* cpu flags: enabled */
                mp->cpus++;
            e += 20;
            break;
        case MP_IOAPIC:
            if (e[3] & 1) {
                if (mp->ioapics++ == 0)
                    mp->ioapic = *(const u32 *)(e + 4);
            }
            e += 8;
            break;
        case MP_BUS:
        case MP_IOINTR:
        case MP_LINTR:
            e += 8;
            break;
        default:
            return -1;                  /* an entry type we cannot step over */
        }
    }
    return 0;
}
