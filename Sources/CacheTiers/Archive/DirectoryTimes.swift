/// The archived modes and modification times of directories, each applied once nothing
/// more is written inside it: writing an entry changes its directory's time, and a
/// read-only directory takes no new entry.
///
/// Directories are applied as the stream leaves them, deepest first, like GNU tar does,
/// so the list of pending ones is as long as the tree is deep. With a writer pool, a
/// left directory waits until the pool has written every file submitted before it. The
/// directories the archive makes unwritable, and the root, come at the very end.
struct DirectoryTimes {
    struct Pending {
        var path: PathBytes
        var mode: UInt32
        var modificationTime: Int64
    }

    private let tree: ExtractionTree
    /// The ancestors of the current entry, outermost first.
    private var open: [Pending] = []
    /// Directories the stream has left whose files may still be in the pool: applied once
    /// the pool has written every job up to `sequence`.
    private var awaiting: [(directory: Pending, sequence: Int)] = []
    /// Directories the archive makes unwritable: applied at the very end, so a later
    /// entry inside them can still be written.
    private var readOnly: [Pending] = []
    /// The mode and time the archive gives the root (its `./` entry), if any: applied
    /// after everything else, since every top-level entry changes the root's time.
    private var root: Pending?
    /// Directories whose mode was set to something other than the one mkdir gives.
    private var withOtherModes: Set<PathBytes> = []

    init(tree: ExtractionTree) {
        self.tree = tree
    }

    /// A directory the extractor made (or found): its archived mode and time wait until
    /// the stream leaves it. It stays writable meanwhile.
    mutating func entered(_ path: PathBytes, mode: UInt32, modificationTime: Int64) {
        open.append(Pending(path: path, mode: mode & 0o777, modificationTime: modificationTime))
    }

    /// The archive's `./`: the root's own mode and time, applied last, as GNU tar does.
    mutating func setRoot(mode: UInt32, modificationTime: Int64) {
        root = Pending(path: PathBytes([]), mode: mode & 0o777, modificationTime: modificationTime)
    }

    /// Applies the pending directories that `relative` is not inside: the stream has left them.
    /// - Parameter lastSubmitted: the writer pool's last job, whose files the left
    ///   directories wait for; nil without a pool.
    mutating func leave(notContaining relative: PathBytes, lastSubmitted: Int?) throws(ExtractionError) {
        while let last = open.last {
            if relative.isInside(last.path) { return }
            open.removeLast()
            if let lastSubmitted {
                awaiting.append((last, lastSubmitted))
            } else {
                try apply(last)
            }
        }
    }

    /// Applies the left directories whose files the pool has all written.
    mutating func applyWritten(through completed: Int) throws(ExtractionError) {
        guard !awaiting.isEmpty else { return }
        var applied = 0
        while applied < awaiting.count, awaiting[applied].sequence <= completed {
            try apply(awaiting[applied].directory)
            applied += 1
        }
        if applied > 0 { awaiting.removeFirst(applied) }
    }

    /// The parent of `relative` when it is a directory whose archived time is already in
    /// place (not the current pending one, and not the root): an entry written into it
    /// must not disturb that time.
    func revisitedParent(of relative: PathBytes) -> PathBytes? {
        guard let parent = relative.parent else { return nil }
        return open.last?.path == parent ? nil : parent
    }

    /// Applies everything still pending; the entries are all written.
    mutating func finish() throws(ExtractionError) {
        for (directory, _) in awaiting {
            try apply(directory)
        }
        awaiting.removeAll()
        while let directory = open.popLast() {
            try apply(directory)
        }
        for directory in readOnly.sorted(by: { $0.path > $1.path }) {
            try apply(directory)
        }
        if let root { try apply(root) }
    }

    /// Sets a finished directory's archived mode and modification time.
    private mutating func apply(_ directory: Pending) throws(ExtractionError) {
        if directory.mode & 0o200 == 0 && !directory.path.isEmpty && !readOnly.contains(where: { $0.path == directory.path }) {
            readOnly.append(directory)
            return
        }
        // Directories are made with the mode most archives hold; chmod only the others,
        // one set to another mode by an earlier entry of the same name, and the root,
        // which was made by someone else.
        let createdMode = tree.createdDirectoryMode
        let setsMode =
            directory.mode != createdMode || directory.path.isEmpty
            || withOtherModes.remove(directory.path) != nil
        try tree.setDirectory(directory.path, mode: setsMode ? directory.mode : nil, modificationTime: directory.modificationTime)
        if setsMode && directory.mode != createdMode { withOtherModes.insert(directory.path) }
    }
}
