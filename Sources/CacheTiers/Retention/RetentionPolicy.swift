import Foundation

/// How much a folder of archives may keep, and for how long: the one rule the cache
/// master (`serve --max-size --max-age-unused --min-age`), a directory tier
/// (`"maxSize"`, `"maxAgeUnused"`, `"minAge"`) and `cachetiers prune` apply.
///
/// Victims are picked from the folder's ``ArchiveIndex``: first every archive unused
/// (not served, or else not stored) for ``maxAgeUnused``; then, while the archives
/// left (plus an incoming one) exceed ``maxSize``, the least recently used, where an
/// archive never served counts from when it was stored. Never an archive younger than
/// ``minAge`` (a key just published is about to be restored by the fleet), and never
/// one in use (being streamed or published).
public struct RetentionPolicy: Sendable, Hashable {
    public var maxSize: StorageSize?
    public var maxAgeUnused: RetentionAge?
    public var minAge: RetentionAge

    /// One hour: a key just published is the one the fleet is about to restore.
    public static let defaultMinAge = RetentionAge(seconds: 3600)

    public init(maxSize: StorageSize? = nil, maxAgeUnused: RetentionAge? = nil, minAge: RetentionAge = Self.defaultMinAge) {
        self.maxSize = maxSize
        self.maxAgeUnused = maxAgeUnused
        self.minAge = minAge
    }

    /// Whether the policy ever evicts anything.
    public var limitsAnything: Bool { maxSize != nil || maxAgeUnused != nil }

    /// Why an archive is evicted, as the `reason` label of `cachetiers_server_evictions_total`.
    public enum Reason: String, Sendable, Hashable, CaseIterable {
        /// The folder was over ``RetentionPolicy/maxSize``.
        case size
        /// Unused for ``RetentionPolicy/maxAgeUnused``.
        case age
    }

    package struct Victim: Sendable, Hashable {
        package var entry: ArchiveIndex.Entry
        package var reason: Reason
    }

    /// What applying the policy to a folder's entries would remove.
    package struct Plan: Sendable, Hashable {
        /// In eviction order: age victims first, then size victims least recently used first.
        package var victims: [Victim]
        /// Bytes stored before any eviction.
        package var storedBytes: Int64
        /// Bytes left once the victims are gone.
        package var remainingBytes: Int64
        /// Whether an incoming archive fits under ``RetentionPolicy/maxSize`` after the victims.
        package var fits: Bool
    }

    /// The victims among `entries`, with room for `incoming` more bytes.
    package func plan(_ entries: [ArchiveIndex.Entry], inUse: Set<CacheKey>, incoming: Int64 = 0, now: Date) -> Plan {
        let stored = entries.reduce(Int64(0)) { $0 + $1.size }
        var remaining = stored
        var victims: [Victim] = []
        // Oldest use first; the key breaks ties so the order never depends on the query's.
        var candidates = entries.filter { entry in
            !inUse.contains(entry.key) && now.timeIntervalSince(entry.createdAt) >= minAge.timeInterval
        }.sorted { ($0.lastUsed, $0.key.rawValue) < ($1.lastUsed, $1.key.rawValue) }[...]
        if let maxAgeUnused {
            let cutoff = now.addingTimeInterval(-maxAgeUnused.timeInterval)
            while let first = candidates.first, first.lastUsed < cutoff {
                victims.append(Victim(entry: first, reason: .age))
                remaining -= first.size
                candidates = candidates.dropFirst()
            }
        }
        guard let maxSize else { return Plan(victims: victims, storedBytes: stored, remainingBytes: remaining, fits: true) }
        while remaining + incoming > maxSize.bytes, let first = candidates.first {
            victims.append(Victim(entry: first, reason: .size))
            remaining -= first.size
            candidates = candidates.dropFirst()
        }
        return Plan(victims: victims, storedBytes: stored, remainingBytes: remaining, fits: remaining + incoming <= maxSize.bytes)
    }
}
