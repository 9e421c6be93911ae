"""Query tests of the Index contract (a part of :class:`pacscore.testing.index.IndexTests`).

Needs pytest (the ``test`` extra); the package never imports this module itself.
"""

from __future__ import annotations

from ..index import Index
from ._index_base import EXPLICIT, MR_CLASS, IndexFixtures, make, put, uids

__all__ = ["IndexQueryTests"]


class IndexQueryTests(IndexFixtures):
    """QIDO-RS / C-FIND matching: exact, wildcard, range, list, case, paging."""

    # -- find: exact, wildcard, range, list, case ------------------------------------------------
    def test_universal_matching(self, populated: Index) -> None:
        assert len(populated.find("patient", {})) == 2
        assert len(populated.find("study", {"PatientName": "", "StudyDate": "*"})) == 3
        assert len(populated.find("series", {"Modality": ""})) == 5
        assert len(populated.find("instance", {})) == 9

    def test_find_patient_level(self, populated: Index) -> None:
        [p] = populated.find("patient", {"PatientID": "P1"})
        assert p["PatientName"] == "Doe^Jane"
        assert p["NumberOfPatientRelatedStudies"] == 2
        assert p["NumberOfPatientRelatedInstances"] == 5
        assert "StudyInstanceUID" not in p
        assert uids(populated.find("patient", {"PatientName": "doe^jane"}), "PatientID") == ["P1"]
        assert uids(populated.find("patient", {"PatientName": "SMITH^JOHN"}),
                    "PatientID") == ["P2"]
        assert uids(populated.find("patient", {"PatientName": "*^J*"}), "PatientID") == [
            "P1", "P2"]
        assert uids(populated.find("patient", {"PatientName": "d?e*"}), "PatientID") == ["P1"]
        assert uids(populated.find("patient", {"PatientID": "P?"}), "PatientID") == ["P1", "P2"]
        assert populated.find("patient", {"PatientID": "P"}) == []
        assert populated.find("patient", {"PatientID": "P3"}) == []
        assert populated.find("patient", {"PatientName": "Doe"}) == []  # no implicit prefix

    def test_find_study_exact_and_wildcard(self, populated: Index) -> None:
        def studies(**q: str) -> list[str]:
            return sorted(uids(populated.find("study", q), "StudyInstanceUID"))

        assert studies(StudyInstanceUID="1.2.2") == ["1.2.2"]
        assert studies(PatientID="P1") == ["1.2.1", "1.2.2"]
        assert studies(AccessionNumber="A.100") == ["1.2.1"]
        assert studies(AccessionNumber="A.1*") == ["1.2.1"]  # '.' is literal
        assert studies(AccessionNumber="A?100") == ["1.2.1", "1.2.2"]
        assert studies(AccessionNumber="*7") == ["1.2.3"]
        assert studies(AccessionNumber="*") == ["1.2.1", "1.2.2", "1.2.3"]
        assert studies(StudyDescription="CH*") == ["1.2.1", "1.2.2", "1.2.3"]
        assert studies(PatientName="smith*") == ["1.2.3"]
        assert studies(PatientName="SMITH^JOHN", PatientID="P2") == ["1.2.3"]
        assert studies(PatientName="SMITH^JOHN", PatientID="P1") == []
        assert studies(ReferringPhysicianName="WHO^doctor") == ["1.2.1", "1.2.2", "1.2.3"]
        assert studies(StudyInstanceUID="1.2.*") == ["1.2.1", "1.2.2", "1.2.3"]
        assert studies(StudyInstanceUID="1.2.9") == []

    def test_find_study_attributes(self, populated: Index) -> None:
        [s] = populated.find("study", {"StudyInstanceUID": "1.2.1"})
        assert s["PatientID"] == "P1" and s["PatientName"] == "Doe^Jane"
        assert s["StudyDate"] == "20200101" and s["AccessionNumber"] == "A.100"
        assert s["ModalitiesInStudy"] == "CT\\PR"
        assert s["NumberOfStudyRelatedSeries"] == 2
        assert s["NumberOfStudyRelatedInstances"] == 3

    def test_find_study_date_ranges(self, populated: Index) -> None:
        def studies(date: str) -> list[str]:
            return sorted(uids(populated.find("study", {"StudyDate": date}),
                               "StudyInstanceUID"))

        assert studies("20200101-20200131") == ["1.2.1", "1.2.2"]
        assert studies("20200102-20200131") == ["1.2.2"]
        assert studies("20200101-20200130") == ["1.2.1"]
        assert studies("20200131-20200201") == ["1.2.2", "1.2.3"]
        assert studies("20200101") == ["1.2.1"]
        assert studies("20200201-") == ["1.2.3"]
        assert studies("20200131-") == ["1.2.2", "1.2.3"]
        assert studies("-20200131") == ["1.2.1", "1.2.2"]
        assert studies("-20191231") == []
        assert studies("20200202-") == []
        assert studies("20200301-20200401") == []

    def test_date_range_skips_studies_without_a_date(self, index: Index) -> None:
        put(index, make("1.3.1", study="1.3.1", series="1.3.1.1", date=""),
            make("1.3.2", study="1.3.2", series="1.3.2.1", date="20200105"))
        found = index.find("study", {"StudyDate": "-20991231"})
        assert uids(found, "StudyInstanceUID") == ["1.3.2"]
        assert len(index.find("study", {"StudyDate": ""})) == 2

    def test_find_date_range_at_lower_levels(self, populated: Index) -> None:
        series = populated.find("series", {"StudyDate": "20200115-20200215"})
        assert sorted(uids(series, "SeriesInstanceUID")) == ["1.2.2.1", "1.2.3.1", "1.2.3.2"]
        inst = populated.find("instance", {"StudyDate": "-20200101"})
        assert sorted(uids(inst, "SOPInstanceUID")) == ["1.9.1", "1.9.2", "1.9.3"]

    def test_find_uid_lists(self, populated: Index) -> None:
        found = populated.find("study", {"StudyInstanceUID": "1.2.1\\1.2.3\\1.2.77"})
        assert sorted(uids(found, "StudyInstanceUID")) == ["1.2.1", "1.2.3"]
        found = populated.find("series", {"SeriesInstanceUID": "1.2.2.1\\1.2.3.2"})
        assert sorted(uids(found, "SeriesInstanceUID")) == ["1.2.2.1", "1.2.3.2"]
        found = populated.find("series", {"StudyInstanceUID": "1.2.1\\1.2.2"})
        assert sorted(uids(found, "SeriesInstanceUID")) == ["1.2.1.1", "1.2.1.2", "1.2.2.1"]
        found = populated.find("instance", {"SOPInstanceUID": "1.9.2\\1.9.9"})
        assert sorted(uids(found, "SOPInstanceUID")) == ["1.9.2", "1.9.9"]
        found = populated.find("instance", {"SeriesInstanceUID": "1.2.1.2\\1.2.3.2"})
        assert sorted(uids(found, "SOPInstanceUID")) == ["1.9.3", "1.9.9"]
        found = populated.find("instance", {"SOPClassUID": f"{MR_CLASS}\\1.2.3"})
        assert sorted(uids(found, "SOPInstanceUID")) == ["1.9.3", "1.9.4", "1.9.5", "1.9.9"]

    def test_fuzzy_person_name_matching(self, populated: Index) -> None:
        """QIDO-RS fuzzymatching=true: words of the query start words of the name, any
        order, no case; without the flag the same keys match nothing."""
        def patients(name: str, fuzzy: bool) -> list[str]:
            return sorted(uids(populated.find("patient", {"PatientName": name},
                                              fuzzy=fuzzy), "PatientID"))

        assert patients("jan", fuzzy=True) == ["P1"]
        assert patients("jo sm", fuzzy=True) == ["P2"]
        assert patients("do", fuzzy=True) == ["P1"]
        assert patients("jan*", fuzzy=True) == ["P1"]
        # Wildcards keep their meaning: fuzzy matching only ever adds results.
        assert patients("*mith*", fuzzy=True) == patients("*mith*", fuzzy=False) == ["P2"]
        assert patients("smith^j*", fuzzy=True) == ["P2"]
        assert patients("jane smith", fuzzy=True) == []
        assert patients("jan", fuzzy=False) == []
        assert patients("jo sm", fuzzy=False) == []
        studies = populated.find("study", {"PatientName": "john", "PatientID": "P2"},
                                 fuzzy=True)
        assert uids(studies, "StudyInstanceUID") == ["1.2.3"]

    def test_uid_list_with_a_repeated_uid_matches_once(self, populated: Index) -> None:
        found = populated.find("study", {"StudyInstanceUID": "1.2.1\\1.2.1"})
        assert uids(found, "StudyInstanceUID") == ["1.2.1"]
        found = populated.find("instance", {"SOPInstanceUID": "1.9.2\\1.9.2\\1.9.3"})
        assert sorted(uids(found, "SOPInstanceUID")) == ["1.9.2", "1.9.3"]

    def test_find_series_level(self, populated: Index) -> None:
        found = populated.find("series", {"StudyInstanceUID": "1.2.3"})
        assert sorted(uids(found, "SeriesInstanceUID")) == ["1.2.3.1", "1.2.3.2"]
        by_uid = {s["SeriesInstanceUID"]: s for s in found}
        assert by_uid["1.2.3.1"]["NumberOfSeriesRelatedInstances"] == 3
        assert by_uid["1.2.3.1"]["Modality"] == "CT"
        assert by_uid["1.2.3.1"]["PatientID"] == "P2"  # parents' keys are matchable
        found = populated.find("series", {"Modality": "MR"})
        assert sorted(uids(found, "SeriesInstanceUID")) == ["1.2.2.1", "1.2.3.2"]
        found = populated.find("series", {"Modality": "MR", "PatientID": "P2"})
        assert uids(found, "SeriesInstanceUID") == ["1.2.3.2"]
        found = populated.find("series", {"PatientName": "doe*", "Modality": "C?"})
        assert uids(found, "SeriesInstanceUID") == ["1.2.1.1"]
        assert populated.find("series", {"Modality": "US"}) == []

    def test_find_instance_level(self, populated: Index) -> None:
        found = populated.find("instance", {"SeriesInstanceUID": "1.2.3.1"})
        assert sorted(uids(found, "SOPInstanceUID")) == ["1.9.6", "1.9.7", "1.9.8"]
        [one] = populated.find("instance", {"SOPInstanceUID": "1.9.3"})
        assert one["SOPClassUID"] == MR_CLASS
        assert one["StudyInstanceUID"] == "1.2.1" and one["SeriesInstanceUID"] == "1.2.1.2"
        assert one["AvailableTransferSyntaxUID"] == EXPLICIT
        found = populated.find("instance", {"SOPInstanceUID": "1.9.?"})
        assert len(found) == 9
        found = populated.find("instance", {"StudyInstanceUID": "1.2.2", "PatientID": "P1"})
        assert sorted(uids(found, "SOPInstanceUID")) == ["1.9.4", "1.9.5"]
        found = populated.find("instance", {"PatientName": "SMITH^John", "Modality": "MR"})
        assert uids(found, "SOPInstanceUID") == ["1.9.9"]
        assert populated.find("instance", {"SeriesInstanceUID": "1.2.9.9"}) == []

    def test_limit_and_offset(self, populated: Index) -> None:
        everything = populated.find("instance", {})
        assert len(everything) == 9
        pages = [populated.find("instance", {}, limit=4, offset=o) for o in (0, 4, 8)]
        assert [len(p) for p in pages] == [4, 4, 1]
        assert [r for p in pages for r in p] == everything
        assert populated.find("instance", {}, limit=0) == []
        assert populated.find("instance", {}, offset=9) == []
        assert populated.find("instance", {}, offset=100, limit=5) == []
        assert populated.find("instance", {}, limit=100) == everything
        ct = populated.find("series", {"Modality": "CT"})
        assert populated.find("series", {"Modality": "CT"}, offset=1) == ct[1:]
        assert populated.find("study", {"PatientID": "P1"}, limit=1) == populated.find(
            "study", {"PatientID": "P1"})[:1]
