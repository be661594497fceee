# The KVM probe of `vtorque doctor`: a 64 KiB BIOS image that takes a virtual CPU from
# real mode through protected mode and paging into long mode, printing one letter per
# step on the debug console (port 0xe9), then exits QEMU through isa-debug-exit (port
# 0xf4: exit status 99). Under a KVM that cannot run guests the letters stop where the
# virtual CPU hangs. Assemble: as -o p.o kvmprobe.S && ld -Ttext=0 --oformat binary -o p.rom p.o
# (vtorque/admin/kvmprobe.py carries the bytes; a unit test reassembles and compares.)
        .code16
        .text
        .globl _start
_start:
        cli
        movw $0xF000, %ax
        movw %ax, %ds
        movb $'R', %al                  # real mode
        outb %al, $0xE9
        lgdtl (gdt_desc)
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x08, $(0xF0000 + pm32)
        .code32
pm32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movb $'P', %al                  # protected mode
        outb %al, $0xE9
        movl $0x1000, %edi              # page tables: PML4 0x1000, PDPT 0x2000, PD 0x3000
        xorl %eax, %eax
        movl $(3 * 4096 / 4), %ecx
        rep stosl
        movl $0x2003, 0x1000
        movl $0x3003, 0x2000
        movl $0x00000083, 0x3000        # the first 2 MiB, identity-mapped
        movl %cr4, %eax
        orl $0x20, %eax                 # PAE
        movl %eax, %cr4
        movl $0x1000, %eax
        movl %eax, %cr3
        movl $0xC0000080, %ecx          # EFER.LME
        rdmsr
        orl $0x100, %eax
        wrmsr
        movb $'E', %al
        outb %al, $0xE9
        movl %cr0, %eax
        orl $0x80000000, %eax           # paging on: long mode
        movl %eax, %cr0
        movb $'G', %al
        outb %al, $0xE9
        ljmpl $0x18, $(0xF0000 + lm64)
        .code64
lm64:
        movb $'L', %al                  # long mode
        outb %al, $0xE9
        movb $0x31, %al                 # exit status (0x31 << 1) | 1 = 99
        outb %al, $0xF4
1:      hlt
        jmp 1b
        .balign 8
gdt:
        .quad 0
        .quad 0x00CF9A000000FFFF        # 0x08: 32-bit code
        .quad 0x00CF92000000FFFF        # 0x10: data
        .quad 0x00AF9A000000FFFF        # 0x18: 64-bit code
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .long 0xF0000 + gdt
code_end:
        .org 0xFFF0                     # the reset vector: jump to the code above
        .code16
        ljmp $0xF000, $_start
        .org 0x10000
