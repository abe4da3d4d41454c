"""Knowledge as data: ontology, label sets, concept vocabulary, prompt templates and plain-language
condition information.

Everything here is loaded from versioned YAML files in ``dermfm/knowledge/data``; users extend it
with their own files (same schema) passed by path, never by editing source.
"""

from dermfm.knowledge.labels import LabelClass, LabelSet, label_set_names, load_label_set
from dermfm.knowledge.ontology import Node, Ontology, load_ontology
from dermfm.knowledge.patient_info import PatientEntry, PatientInfo, load_patient_info
from dermfm.knowledge.templates import ConceptProtocol, concept_protocol, diagnosis_templates, fill
from dermfm.knowledge.vocabulary import (
    Concept,
    ConceptVocabulary,
    load_concepts,
    resolve_concepts,
)

__all__ = [
    "Concept",
    "ConceptProtocol",
    "ConceptVocabulary",
    "LabelClass",
    "LabelSet",
    "Node",
    "Ontology",
    "PatientEntry",
    "PatientInfo",
    "concept_protocol",
    "diagnosis_templates",
    "fill",
    "label_set_names",
    "load_concepts",
    "load_label_set",
    "load_ontology",
    "load_patient_info",
    "resolve_concepts",
]
